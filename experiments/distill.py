r"""Distillation: a small student learns from a strong teacher's traces.

    python -m r1jax.pipeline --config=experiments/distill.py --workdir=runs/dist \
      --config.teacher_traces.model.hf_path=runs/r1/final_rl

  teacher_traces  rejection sampling from the teacher: correct, readable
                  traces only (experiments/rejection.py)
  student_base    the student's own base model: the tiny CPU model with
                  model.overrides (2 layers instead of 4), pretrained on the
                  same corpus and with the teacher's tokenizer
  student_sft     sequence-level distillation (the paper's): SFT of the
                  student on the teacher's traces
  student_rl      (arg `compare`) the same student trained with GRPO instead,
                  for about the CPU time of teacher_traces + student_sft

Token-level distillation is a switch of the SFT stage, for a teacher and a
student with one tokenizer: --config.student_sft.distill.teacher=<teacher dir>
(the checkpoint teacher_traces samples from: an HF dir, a GGUF file or a
finished stage's workdir) --config.student_sft.distill.kind=forward
(KL(teacher || student)) or reverse, computed on the fly from the teacher's
logits on the same tokens; distill.weight mixes it with the NLL of the traces
and distill.temperature softens both distributions (KL scaled by T^2).
With a real student, point student_sft.model.hf_path at it and drop
student_base: --config.order=teacher_traces,student_sft.
paper: Qwen2.5 and Llama students fine-tuned on 800k R1 samples, SFT only;
distillation beat large-scale RL on the same student.
"""

import ml_collections

from experiments import cold_start
from experiments import common
from experiments import pretrain_tiny
from experiments import reasoning_rl
from experiments import rejection
from experiments import zero


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, compare=False, **zero.ARGS)
  compare, runlocal = args.compare, args.runlocal
  # The stages' argument: zero.py's (runlocal, model=, data=).
  arg = common.pack_arg(**{k: args[k] for k in zero.ARGS})
  c = ml_collections.ConfigDict()
  c.order = ('teacher_traces', 'student_base', 'student_sft') + (
      ('student_rl',) if compare else ())

  c.teacher_traces = rejection.get_config(arg)
  rl = reasoning_rl.get_config(arg)
  c.teacher_traces.data.languages = ml_collections.ConfigDict(
      rl.data.get('languages', {}).to_dict() if 'languages' in rl.data else {})
  c.teacher_traces.data.num_train = 1000 if not runlocal else 16
  c.teacher_traces.sampling.max_new_tokens = rl.sampling.max_new_tokens
  c.teacher_traces.sampling.max_prompt_tokens = rl.sampling.max_prompt_tokens

  c.student_base = pretrain_tiny.get_config(common.pack_arg(runlocal=runlocal))
  c.student_base.model.overrides = ml_collections.ConfigDict({'num_layers': 2})
  c.student_base.tokenizer.path = rl.model.hf_path  # the teacher's tokenizer
  c.student_base.export.hf_dir = ''   # WORKDIR/hf, not the shared cache
  c.student_base.train.steps = 400 if not runlocal else 20
  # The R1-Zero ability check is for RL's tiny base, not a distillation
  # student (its ability comes from the teacher's traces).
  c.student_base.ability.check = False

  c.student_sft = cold_start.get_config(arg)
  c.student_sft.model.hf_path = '@student_base'
  c.student_sft.model.pretrain_if_missing = False
  c.student_sft.data.source = 'jsonl'
  c.student_sft.data.path = '@teacher_traces'
  # Token-level distillation (the section comes from cold_start.py):
  c.student_sft.distill.teacher = ''  # '' = sequence-level only
  c.student_sft.distill.kind = 'forward'  # forward | reverse KL
  c.student_sft.distill.weight = 1.0  # loss = (1 - w) * NLL + w * T^2 * KL
  c.student_sft.distill.temperature = 1.0  # T, on both models' logits

  if compare:
    c.student_rl = reasoning_rl.get_config(arg)
    c.student_rl.model.hf_path = '@student_base'
    c.student_rl.model.pretrain_if_missing = False
  return c

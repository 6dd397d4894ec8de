r"""The tiny-scale R1 study: R1-Zero against R1, language mixing, distillation
against RL, prompt sensitivity, for several seeds, in one resumable command.

    python -m r1jax.pipeline --config=experiments/r1_study.py --workdir=runs/study
    python -m r1jax.pipeline --config=experiments/r1_study.py \
        --workdir=runs/study --only=zero,zero_shots0         # one comparison
    python -m r1jax.pipeline --config=experiments/r1_study.py \
        --workdir=runs/study --config.seeds='(2,)'           # one more seed

`runlocal` shrinks every size for tests (tests/test_study.py); its base,
pretrained for a minute, keeps no rejection sample, so a runlocal study
stops at stage `sft` with 'no examples'.

Per seed S (WORKDIR/seedS/<stage>; every stage's seed is S, so each seed has
its own tiny base, pretrained into the cache when missing):

  zero            R1-Zero: experiments/zero.py's GRPO from the base on the
                  bilingual prompts (half English, half Russian), accuracy +
                  format rewards only; its language consistency over
                  training is the language mixing R1 set out to fix
  cold_start      R1 stage 1: SFT of the base on readable traces (every
                  connective in the problem's language; p_mixed 0)
  reasoning_rl    R1 stage 2: GRPO, accuracy + format + language consistency
  rejection       R1 stage 3 data: correct, readable samples of reasoning_rl
  sft             R1 stage 3: SFT of the *base* on them
  final_rl        R1 stage 4: GRPO from sft, every reward
  zero_shots<k>   R1-Zero's final model with k worked examples in front of
  r1_shots<k>     each held-out problem (k = 0, 1, 2, 4); R1 final's likewise
                  (k = 0 repeats the stage's own evaluation, by the same
                  path as the other k)
  zero_en_shots<k>, r1_en_shots<k>
                  the length control, k = 0, 1: the English half alone,
                  English shots, 1-shot prompts within the base's 128-token
                  pretraining rows
  teacher_traces  rejection sampling from the strongest model of the study,
                  '@best:final_rl,zero' (the higher held-out pass@1)
  student_base    the student: the tiny architecture at half the width (4
                  layers, hidden 96), pretrained on the same corpus with the
                  teacher's tokenizer
  student_sft     (a) SFT of the student on the teacher's traces (the paper's
                  distillation)
  student_kd      (b) token-level distillation: the same traces, loss = KL to
                  the teacher's logits on the fly (distill.kind forward)
  student_rl      (c) GRPO from the student's base, evaluated every 100
                  steps; the study prints its pass@1 at (a)'s wall time
                  (teacher_traces + student_sft) and at 2x (`equal_time`)

With the argument `ablations` (experiments/r1_study.py:ablations), one
more stage per seed, after the others:

  reasoning_rl_nolang
                  reasoning_rl with the language reward's weight 0

    python -m r1jax.pipeline --config=experiments/r1_study.py:ablations \
        --workdir=runs/study --only=reasoning_rl_nolang

Every row is scored on the same held-out set (zero.py's 256 test problems,
asked half in Russian, 4 samples at temperature 1, 96 new tokens, greedy too):
one `eval` section (`held_out` below) is copied into every stage. At the end
the pipeline prints each stage's figures as mean +- std over the seeds
(WORKDIR/study.md, study.json) and draws the GRPO stages' curves
(WORKDIR/study.png). The same command resumes a killed study: finished
seeds and stages are skipped, a killed stage resumes from its checkpoint.
"""

import ml_collections

from experiments import common
from experiments import distill
from experiments import r1
from experiments import zero

LANGUAGES = {'en': 0.5, 'ru': 0.5}
SHOTS = (0, 1, 2, 4)
PROMPT_TOKENS = {0: 64, 1: 136, 2: 208, 4: 448}  # the prompt width per k


def held_out(args) -> ml_collections.ConfigDict:
  """The one held-out evaluation of every row."""
  e = common.eval_section(dataset='synthetic', num_problems=256,
                          max_new_tokens=96)
  e.ks = (1, 4)
  e.greedy = True
  e.languages = ml_collections.ConfigDict(LANGUAGES)
  if args.runlocal:
    e.num_problems = 16
    e.max_new_tokens = 48
  return e


# Fields of a GRPO stage's eval section that say when it runs, not what.
_SCHEDULE = ('every', 'at_start', 'num_texts')


def _set_eval(stage: ml_collections.ConfigDict,
              ev: ml_collections.ConfigDict) -> None:
  """The stage's eval section becomes `ev`, with the stage's own schedule
  fields (`_SCHEDULE`) where it has them."""
  new = ml_collections.ConfigDict(ev.to_dict())
  for k in _SCHEDULE:
    if k in stage.eval:
      new[k] = stage.eval[k]
  stage.eval = new


def _evaluate_stage(model: str, ev: ml_collections.ConfigDict, shots: int,
                    arg: str) -> ml_collections.ConfigDict:
  """An `evaluate` stage of `model` ('@stage') with `shots` worked examples."""
  rl = zero.get_config(arg)
  c = ml_collections.ConfigDict()
  c.stage = 'evaluate'
  c.seed = 0
  c.model = rl.model
  c.model.hf_path = model
  c.model.gguf_path = ''
  c.model.pretrain_if_missing = False
  del c.model['lora']
  c.tokenizer = rl.tokenizer
  c.data = rl.data                   # the difficulty the shots are drawn at
  c.rewards = rl.rewards
  c.sampling = ml_collections.ConfigDict()
  # Few-shot prompts are long: the 4-shot ones reach ~400 tokens (Russian
  # shots: 2-3 tokens a Cyrillic letter).
  c.sampling.max_prompt_tokens = PROMPT_TOKENS[shots]
  c.sampling.decode_segments = 4
  c.eval = ml_collections.ConfigDict(ev.to_dict())
  c.eval.few_shot = shots
  c.mesh = rl.mesh
  return c


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, ablations=False, **zero.ARGS)
  if args.model or args.data or args.lora or args.check:
    raise ValueError('experiments/r1_study.py is the tiny model\'s study on '
                     'the synthetic bilingual problems; it takes runlocal '
                     'and ablations only')
  runlocal = args.runlocal
  arg = common.pack_arg(**{k: args[k] for k in zero.ARGS})  # the stages' own
  ev = held_out(args)
  c = ml_collections.ConfigDict()
  c.seeds = (0, 1, 2)

  # R1-Zero on the bilingual prompts: no language reward.
  c.zero = zero.get_config(arg)
  c.zero.data.languages = ml_collections.ConfigDict(LANGUAGES)
  c.zero.sampling.max_new_tokens = 96 if not runlocal else 48
  c.zero.sampling.max_prompt_tokens = 64
  c.zero.rl.length_buckets = 4
  _set_eval(c.zero, ev)
  c.zero.eval.every = 40 if not runlocal else 0
  c.zero.eval.at_start = True

  # The R1 pipeline (experiments/r1.py), scored on the same set.
  pipe = r1.get_config(arg)
  for name in pipe.order:
    c[name] = pipe[name]
    if 'eval' in c[name]:
      _set_eval(c[name], ev)
  c.cold_start.data.p_mixed = 0.0    # readable: the paper's cold start
  c.cold_start.data.languages = ml_collections.ConfigDict(LANGUAGES)
  for name in ('reasoning_rl', 'final_rl'):
    c[name].rl.length_buckets = 4
    c[name].eval.every = 30 if not runlocal else 0
  c.final_rl.train.steps = 60 if not runlocal else 2

  # Prompt sensitivity: R1-Zero and R1 final at 1, 2, 4 shots.
  shots = SHOTS if not runlocal else (1,)
  for k in shots:
    c[f'zero_shots{k}'] = _evaluate_stage('@zero', ev, k, arg)
    c[f'r1_shots{k}'] = _evaluate_stage('@final_rl', ev, k, arg)
  # The length control: English problems and shots alone, whose 1-shot
  # prompts (~90 tokens) stay within the 128-token pretraining rows, where
  # the bilingual 1-shot prompts (~130) pass them.
  en_shots = (0, 1) if not runlocal else (1,)
  for k in en_shots:
    for m, ref in (('zero', '@zero'), ('r1', '@final_rl')):
      c[f'{m}_en_shots{k}'] = _evaluate_stage(ref, ev, k, arg)
      c[f'{m}_en_shots{k}'].eval.languages = ml_collections.ConfigDict(
          {'en': 1.0})

  # Distillation from the study's strongest model.
  dist = distill.get_config(common.pack_arg(compare=True, runlocal=runlocal))
  c.teacher_traces = dist.teacher_traces
  c.teacher_traces.model.hf_path = '@best:final_rl,zero'
  c.teacher_traces.data.languages = ml_collections.ConfigDict(LANGUAGES)
  c.student_base = dist.student_base
  # Half the width, the same depth: a 2-layer student (README, before this
  # study) could not execute the procedure at all.
  c.student_base.model.overrides = ml_collections.ConfigDict(
      {'hidden_size': 96, 'intermediate_size': 256, 'num_heads': 3,
       'num_kv_heads': 1})
  c.student_base.train.steps = 600 if not runlocal else 20
  _set_eval(c.student_base, ev)      # the student's own row of the table
  c.student_sft = dist.student_sft
  # ~3 passes over the ~3,000 kept traces: at 150 steps (~0.8 of a pass)
  # seed 1's student learned the traces' shape but not their arithmetic
  # (pass@1 0.071, below its base); at 450 steps it reached 0.388.
  c.student_sft.train.steps = 450 if not runlocal else 4
  _set_eval(c.student_sft, ev)
  c.student_kd = ml_collections.ConfigDict(c.student_sft.to_dict())
  c.student_kd.distill.teacher = '@best:final_rl,zero'
  c.student_rl = dist.student_rl
  c.student_rl.data.languages = ml_collections.ConfigDict(LANGUAGES)
  c.student_rl.rl.length_buckets = 4
  _set_eval(c.student_rl, ev)
  # Long enough to pass twice (a)'s wall time (teacher_traces + student_sft:
  # 5-7 min, 1.3 s a GRPO step idle); `equal_time` reads its pass@1 at 1x
  # and 2x that time. At 300 steps seed 0 stopped short of 2x.
  c.student_rl.train.steps = 600 if not runlocal else 2
  c.student_rl.eval.every = 100 if not runlocal else 0
  c.student_rl.eval.at_start = True
  c.equal_time = ml_collections.ConfigDict(
      {'student_rl': 'teacher_traces,student_sft'})

  # Stages run side by side (r1jax/pipeline_jobs.py). On the 2-core CPU a
  # GRPO stage on one core beside another does 1.5x the work per second of
  # one on both cores; SFT does not (pretraining on one core beside another
  # stage is 2.6x slower), so SFT stages (and the tiny bases) take both
  # cores and the others one: their figures are those of a run with as many
  # cores (a 2-core machine's, for SFT). --config.cores_per_stage=0 runs one
  # stage at a time on every core.
  c.cores_per_stage = 'sft=2,grpo=1,rejection_sampling=1,evaluate=1'
  # A stage starts in this order once what it reads is there and its cores
  # are free: the longest chains first (the R1 chain, then the student's
  # base and R1-Zero), the short evaluations last, so the cores stay busy.
  c.order = (tuple(pipe.order[:2]) + ('student_base', 'zero')
             + tuple(pipe.order[2:4]) + ('student_rl',)
             + tuple(pipe.order[4:]) + ('teacher_traces', 'student_kd',
                                        'student_sft')
             + tuple(f'{m}_shots{k}' for m in ('zero', 'r1') for k in shots)
             + tuple(f'{m}_en_shots{k}' for m in ('zero', 'r1')
                     for k in en_shots))
  if args.ablations:
    # The paper's 'slight cost' of the language reward: reasoning RL from
    # the same cold start with the language weight 0.
    c.reasoning_rl_nolang = ml_collections.ConfigDict(
        c.reasoning_rl.to_dict())
    c.reasoning_rl_nolang.rewards.weights.language = 0.0
    c.order = c.order + ('reasoning_rl_nolang',)
  if runlocal:
    c.seeds = (0, 1)
  return c

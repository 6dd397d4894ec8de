r"""Cold start (R1 stage 1): SFT on readable long chains of thought.

    python -m r1jax.train --config=experiments/cold_start.py --workdir=runs/cs

Starts from a base model and fine-tunes it on a few thousand readable traces,
`<think>` reasoning `</think>` then the answer, so that RL starts from a model
that already writes in the format the rewards check.

Default (a 2-core CPU): the tiny base model of experiments/zero.py (pretrained
first if it is not cached) on 2,000 synthetic arithmetic traces, half of the
problems asked in Russian ('Вычисли 2 + 7'). For those, each connecting word
of the trace ('First,', 'Then,', 'So the answer is') is written in English
with probability data.p_mixed, else in Russian: the language mixing R1 saw in
R1-Zero's chains of thought, which experiments/reasoning_rl.py's language
reward then removes. Each trace ends with a one-sentence summary.

Variants (comma-separated after the colon): runlocal; model=<preset> for a
real checkpoint (as in experiments/zero.py), which trains on the GSM8K and
MATH reference solutions (r1jax/data/cold_start.py, R1-Zero template), or
data=gsm8k | math for only one of them.
paper: thousands of cold-start examples from few-shot prompting with long
CoTs, R1-Zero outputs made readable, and human post-processing; format
|special_token|<reasoning_process>|special_token|<summary>.
"""

import ml_collections

from experiments import zero


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  args = zero._parse(arg)  # pylint: disable=protected-access
  runlocal = 'runlocal' in args
  rl_cfg = zero.get_config(arg)  # model / eval / mesh sections are shared
  real = bool(rl_cfg.model.preset)

  c = ml_collections.ConfigDict()
  c.stage = 'sft'
  c.seed = 0

  # Model: the base checkpoint (HF directory, GGUF file, or a stage's workdir)
  c.model = rl_cfg.model
  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ''              # '' = the checkpoint's own

  # Data: readable traces
  c.data = ml_collections.ConfigDict()
  c.data.source = 'cold_start'       # | 'jsonl' (data.path: a file or the
  #                                    workdir of a rejection_sampling stage)
  c.data.path = ''
  data = args.get('data', '')
  c.data.datasets = (('synthetic',) if not real else
                     ((data,) if data in ('gsm8k', 'math') else ('gsm8k', 'math')))
  c.data.local_dir = ''              # raw jsonl files (else $R1JAX_DATA_DIR)
  c.data.template = rl_cfg.data.template
  # Synthetic traces (datasets='synthetic'): problems as in experiments/zero.py
  c.data.tasks = tuple(rl_cfg.data.tasks)
  c.data.difficulty = rl_cfg.data.difficulty
  c.data.num_train = 2000            # cold-start examples ("a few thousand")
  c.data.languages = ml_collections.ConfigDict(
      {'en': 0.5, 'ru': 0.5} if not real else {})  # prompt languages
  c.data.p_mixed = 0.5               # English connectives in non-English traces
  c.data.num_eval_docs = 64          # held-out examples for the eval loss
  c.data.seq_len = 192 if not real else 2048  # tokens per row
  c.data.pack = True
  c.data.loss_on_prompt = False      # loss on the completion only

  # Optimisation
  c.train = ml_collections.ConfigDict()
  c.train.steps = 150 if not runlocal else 4
  c.train.batch_size = 16 if not real else 32
  c.train.grad_accum = 1 if not real else 4
  c.train.lr = 1e-3 if not real else 1e-5
  c.train.warmup_steps = 10 if not runlocal else 1
  c.train.min_lr_ratio = 0.1
  c.train.weight_decay = 0.0
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.clip_norm = 1.0
  c.train.log_every = 10 if not runlocal else 1
  c.train.eval_every = 50 if not runlocal else 4
  c.train.eval_batches = 4
  c.train.sample_every = 0           # held-out eval below shows samples
  c.train.sample_tokens = 64
  c.train.checkpoint_every = 50 if not runlocal else 2
  c.train.keep_checkpoints = 2

  # Token-level distillation (r1jax/stages/sft.py), off while teacher='':
  # loss = (1 - weight) * NLL + weight * T^2 * KL to a frozen teacher run on
  # the same batch; the teacher must share the student's tokenizer.
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = ''             # HF dir, GGUF file or a stage's workdir
  c.distill.kind = 'forward'         # KL(teacher || student) | 'reverse'
  c.distill.weight = 1.0             # w in [0, 1]
  c.distill.temperature = 1.0        # T > 0, on both models' logits

  c.export = ml_collections.ConfigDict()
  c.export.hf = True
  c.export.hf_dir = ''               # '' = WORKDIR/hf (the next stage's input)

  # Held-out evaluation at the end (a mixed-language test set by default)
  c.eval = rl_cfg.eval
  c.eval.languages = ml_collections.ConfigDict(dict(c.data.languages))
  c.eval.max_new_tokens = rl_cfg.sampling.max_new_tokens if real else 96
  if runlocal:
    c.data.num_train = 64
    c.eval.num_problems = 16
    c.eval.max_new_tokens = 48
  c.mesh = rl_cfg.mesh
  return c

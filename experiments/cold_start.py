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
data=gsm8k | math for only one of them; lora=<rank> for LoRA adapters
(as in experiments/zero.py).
paper: thousands of cold-start examples from few-shot prompting with long
CoTs, R1-Zero outputs made readable, and human post-processing; format
|special_token|<reasoning_process>|special_token|<summary>.
"""

import ml_collections

from experiments import common
from experiments import zero


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  args = zero.parse(arg)             # zero.py's arguments
  real = common.is_real(args.model)

  c = ml_collections.ConfigDict()
  c.stage = 'sft'
  c.seed = 0

  # Model: the base checkpoint (HF directory, GGUF file, or a stage's
  # workdir); by default zero.py's tiny base (common.model_section).
  c.model = common.model_section(args.model, args.lora)
  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ''              # '' = the checkpoint's own

  # Data: readable traces
  c.data = ml_collections.ConfigDict()
  c.data.source = 'cold_start'       # | 'jsonl' (data.path: a file or the
  #                                    workdir of a rejection_sampling stage)
  c.data.path = ''
  c.data.datasets = ('synthetic',)
  c.data.local_dir = ''              # raw jsonl files (else $R1JAX_DATA_DIR)
  c.data.template = 'r1_zero_short'  # zero.py's
  # Synthetic traces (datasets='synthetic'): problems as in experiments/zero.py
  c.data.tasks = ('arithmetic',)
  c.data.difficulty = ml_collections.ConfigDict(common.tiny_difficulty())
  c.data.num_train = 2000            # cold-start examples ("a few thousand")
  c.data.languages = ml_collections.ConfigDict(
      {'en': 0.5, 'ru': 0.5})        # prompt languages
  c.data.p_mixed = 0.5               # English connectives in non-English traces
  # Each step restates what is left ('First, 4 + 9 = 13, so 13 - 7.'), as
  # the tiny base's corpus does (its CorpusConfig.restate): without it the
  # cold start taught a procedure the 4-layer base executes worse (the next
  # step's operands are then the k-th number of the prompt).
  c.data.restate = True
  # No 'First,' / 'Then,' before the steps, and short words in Russian
  # ('то', 'ответ'; r1jax/data/cold_start.py COMPACT): the base's tokenizer
  # spends 2-3 tokens on a Cyrillic letter, and with the connectives a
  # restated 3-step Russian trace passed the 96-token budget (cold start
  # mean length 80.5, format 0.60; RL then shortened it and lost accuracy).
  c.data.connectives = False
  c.data.num_eval_docs = 64          # held-out examples for the eval loss
  c.data.seq_len = 192               # tokens per row
  c.data.pack = True
  c.data.loss_on_prompt = False      # loss on the completion only

  # Optimisation
  c.train = ml_collections.ConfigDict()
  c.train.steps = 150
  c.train.batch_size = 16
  c.train.grad_accum = 1
  c.train.lr = 1e-3
  c.train.warmup_steps = 10
  c.train.min_lr_ratio = 0.1
  c.train.weight_decay = 0.0
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.clip_norm = 1.0
  c.train.log_every = 10
  c.train.eval_every = 50
  c.train.eval_batches = 4
  c.train.sample_every = 0           # held-out eval below shows samples
  c.train.sample_tokens = 64
  c.train.checkpoint_every = 50
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

  # Held-out evaluation at the end: zero.py's test set, in the prompt
  # languages (a mixed-language test set by default).
  c.eval = common.eval_section(dataset=zero.eval_dataset(args),
                               max_new_tokens=96)
  c.eval.ks = (1, 4)                 # unbiased pass@k reported
  c.eval.greedy = True               # also greedy accuracy
  c.eval.languages = ml_collections.ConfigDict(dict(c.data.languages))

  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1})

  if real:  # a real checkpoint: the GSM8K and MATH reference solutions
    c.data.datasets = ((args.data,) if args.data in ('gsm8k', 'math')
                       else ('gsm8k', 'math'))
    c.data.template = 'r1_zero'
    c.data.languages = ml_collections.ConfigDict()
    c.data.seq_len = 2048
    c.train.batch_size = 32
    c.train.grad_accum = 4
    c.train.lr = 1e-5
    c.eval.num_problems = 500        # zero.py's evaluation of a real model
    c.eval.temperature = 0.6
    c.eval.top_p = 0.95
    c.eval.max_new_tokens = 1024
    c.eval.template = 'r1_zero'
    c.eval.batch_size = 64
    c.eval.languages = ml_collections.ConfigDict()

  if args.runlocal:
    c.model.pretrain_arg = 'runlocal'
    c.data.num_train = 64
    c.train.steps = 4
    c.train.warmup_steps = 1
    c.train.log_every = 1
    c.train.eval_every = 4
    c.train.checkpoint_every = 2
    c.eval.num_problems = 16
    c.eval.max_new_tokens = 48
  return c

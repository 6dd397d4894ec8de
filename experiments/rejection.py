r"""Rejection sampling (R1 stage 3; also the teacher side of distillation).

    python -m r1jax.train --config=experiments/rejection.py \
      --workdir=runs/rs --config.model.hf_path=runs/reasoning_rl

Samples rejection.num_samples completions per prompt from a checkpoint (an HF
directory or the workdir of a finished stage), keeps the correct, readable,
distinct ones (at most filters.max_per_prompt per prompt) and writes
WORKDIR/sft.jsonl for the SFT stage (data.source='jsonl', data.path=WORKDIR),
with WORKDIR/rejection_report.json: how many were left after each filter.

The model, tokenizer, data, rewards and sampling sections are
experiments/zero.py's (same arguments after the colon: runlocal, model=,
data=).
paper: R1 samples from the stage-2 checkpoint, keeps only correct answers,
drops mixed-language, long-paragraph and code-block chains of thought, and
collects about 600k reasoning samples.
"""

import ml_collections

from experiments import zero


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  args = zero.parse(arg)
  rl = zero.get_config(arg)
  c = ml_collections.ConfigDict()
  c.stage = 'rejection_sampling'
  c.seed = 0
  # zero.py's sections (its rl, train, eval and export are GRPO's own).
  for section in ('model', 'tokenizer', 'data', 'rewards', 'sampling', 'mesh',
                  'distributed'):
    c[section] = rl[section]
  c.model.pretrain_if_missing = False  # sample from a trained checkpoint
  # Nothing is trained here: a LoRA run's workdir gives its merged export.
  del c.model['lora']
  c.model.hf_path = ''                 # an HF directory or a stage's workdir

  # Sampling: R1's evaluation settings (paper: temperature 0.6, top-p 0.95)
  # for a model named by `model=` (model=tiny too).
  c.sampling.temperature = 0.6 if args.model else 1.0
  c.sampling.top_p = 0.95 if args.model else 1.0

  # Rejection sampling
  c.rejection = ml_collections.ConfigDict()
  c.rejection.num_samples = 8          # N completions per prompt
  c.rejection.num_prompts = 0          # 0 = all of data.num_train
  c.rejection.batch_size = 256         # rows per sampler call (a chunk)

  # Filters, in the order they apply (see r1jax/stages/rejection.py)
  c.filters = ml_collections.ConfigDict()
  c.filters.format = True              # strict <think>/<answer> format
  c.filters.target_language = 'en'     # unless a record names its own
  c.filters.min_language = 0.95        # language consistency of the CoT
  c.filters.max_tokens = 0             # 0 = the sampling budget
  c.filters.drop_truncated = True      # drop completions cut at the budget
  c.filters.max_repeat = 0.3           # share of repeated word n-grams
  c.filters.ngram = 4
  c.filters.max_per_prompt = 4         # K

  if args.runlocal:
    c.data.num_train = 16
    c.rejection.num_samples = 4
    c.rejection.batch_size = 32
  return c

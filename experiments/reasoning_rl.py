r"""Reasoning RL (R1 stage 2): GRPO with accuracy, format and language rewards.

    python -m r1jax.train --config=experiments/reasoning_rl.py \
      --workdir=runs/rl --config.model.hf_path=runs/cs

experiments/zero.py's GRPO, started from the cold-start checkpoint, with R1's
language-consistency reward (the share of the chain of thought's words in the
prompt's language, `r1jax/rewards/language.py`) added to the rule-based
rewards with weight rewards.weights.language. Prompts (and the held-out set)
mix English and Russian problems, so the reward has something to fix; set the
weight to 0 to log the rate without optimising it (the ablation in README).

Same arguments after the colon as experiments/zero.py.
paper: "we introduce a language consistency reward during RL training, which
is calculated as the proportion of target language words in the CoT ... we
combine the accuracy of reasoning tasks and the reward for language
consistency by directly summing them".
"""

import ml_collections

from experiments import zero


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  args = zero.parse(arg)
  c = zero.get_config(arg)
  real = bool(c.model.preset)
  # The checkpoint to start from: the cold-start stage's workdir (or its HF
  # directory). The default, the tiny base, has never seen a Russian trace.
  c.model.pretrain_if_missing = not real

  c.rewards.weights.language = 0.5   # paper: summed with the accuracy reward
  c.rewards.options.language = ml_collections.ConfigDict(
      {'target_language': 'en'})     # a record's target_language wins

  if not real:
    c.data.languages = ml_collections.ConfigDict({'en': 0.5, 'ru': 0.5})
    c.eval.languages = ml_collections.ConfigDict({'en': 0.5, 'ru': 0.5})
    # Russian connectives are two byte-level tokens per letter.
    c.sampling.max_new_tokens = 96 if not args.runlocal else 48
    c.sampling.max_prompt_tokens = 64
    c.eval.max_new_tokens = c.sampling.max_new_tokens
    c.train.steps = 60 if not args.runlocal else 4
    c.eval.every = 30 if not args.runlocal else 0
  return c

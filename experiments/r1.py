r"""The DeepSeek-R1 pipeline, every stage in order (r1jax.pipeline).

    python -m r1jax.pipeline --config=experiments/r1.py --workdir=runs/r1

  cold_start    SFT of the base model on readable chains of thought
  reasoning_rl  GRPO: accuracy + format + language consistency
  rejection     sample from reasoning_rl, keep correct and readable traces
  sft           SFT of the *base* model on those traces (paper: stage 3
                fine-tunes DeepSeek-V3-Base, not the RL checkpoint)
  final_rl      GRPO again from the stage-3 model, all rule-based rewards

Each stage runs in WORKDIR/<name> and starts from the one before ('@name'
below is that stage's workdir). The same command run again skips finished
stages and resumes a killed one. Any field is a flag, e.g.
--config.reasoning_rl.train.steps=100 or --config.rejection.filters.max_per_prompt=2.
Same arguments after the colon as experiments/zero.py (runlocal, model=, data=).
"""

import ml_collections

from experiments import cold_start
from experiments import reasoning_rl
from experiments import rejection
from experiments import zero


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  runlocal = zero.parse(arg).runlocal  # each stage's config parses `arg` too
  c = ml_collections.ConfigDict()
  c.order = ('cold_start', 'reasoning_rl', 'rejection', 'sft', 'final_rl')

  c.cold_start = cold_start.get_config(arg)
  base = c.cold_start.model.hf_path   # the base checkpoint (tiny: the cache)

  c.reasoning_rl = reasoning_rl.get_config(arg)
  c.reasoning_rl.model.hf_path = '@cold_start'
  c.reasoning_rl.model.gguf_path = ''
  c.reasoning_rl.model.pretrain_if_missing = False

  c.rejection = rejection.get_config(arg)
  c.rejection.model.hf_path = '@reasoning_rl'
  c.rejection.model.gguf_path = ''
  rl_data = c.reasoning_rl.data
  if 'languages' in rl_data:
    c.rejection.data.languages = ml_collections.ConfigDict(
        rl_data.languages.to_dict())
  c.rejection.data.num_train = 1000 if not runlocal else 16
  c.rejection.sampling.max_new_tokens = c.reasoning_rl.sampling.max_new_tokens
  c.rejection.sampling.max_prompt_tokens = (
      c.reasoning_rl.sampling.max_prompt_tokens)

  c.sft = cold_start.get_config(arg)
  c.sft.model.hf_path = base
  c.sft.data.source = 'jsonl'
  c.sft.data.path = '@rejection'

  c.final_rl = reasoning_rl.get_config(arg)
  c.final_rl.model.hf_path = '@sft'
  c.final_rl.model.gguf_path = ''
  c.final_rl.model.pretrain_if_missing = False
  if not c.final_rl.model.preset:
    c.final_rl.train.steps = 40 if not runlocal else 2
    c.final_rl.eval.every = 0

  return c

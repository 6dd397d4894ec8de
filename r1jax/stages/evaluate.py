r"""Evaluation as a stage: a checkpoint's held-out figures, in a pipeline.

    python -m r1jax.train --config=experiments/r1_study.py ... (a stage of it)

Loads `model.hf_path` (an HF directory or a finished stage's workdir, what a
pipeline's '@stage' becomes) and scores it on the held-out problems of
`config.eval` with the one evaluation path (`r1jax.evaluate.evaluate_config`,
the same as every training stage's final evaluation and `python -m
r1jax.evaluate`). It trains nothing: a pipeline uses it to evaluate one model
under other settings than its stage's own, e.g. few-shot prompts
(eval.few_shot = k) or the paper's temperature 0.6 / top-p 0.95.

Writes done.json ({'eval/<metric>': value, 'wall_time_s', 'source'}) and
eval.json (the figures per task and a few completions). Killed, it runs again
from the start: there is nothing to resume.
"""

import json
import time
from typing import Any

import jax
import ml_collections

from r1jax import errors
from r1jax import evaluate
from r1jax import rewards as rewards_lib
from r1jax.run import checks
from r1jax.run import loading
from r1jax.run import problems
from r1jax.run import records as run_records

EVAL_FILE = 'eval.json'


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails at start-up, before any compile, with one line naming the key."""
  ec = config.eval
  checks.check(config, [
      ('model.hf_path', bool(config.model.hf_path or config.model.gguf_path),
       'is empty: an evaluate stage needs a checkpoint (model.hf_path: an HF '
       'directory or an earlier stage\'s workdir; or model.gguf_path)'),
      ('eval.num_problems', ec.num_problems >= 1, 'must be >= 1'),
      ('eval.num_samples', ec.num_samples >= 1, 'must be >= 1'),
      ('eval.temperature', ec.temperature >= 0, 'must be >= 0'),
      ('eval.top_p', 0 < ec.top_p <= 1, 'must be in (0, 1]'),
      ('eval.max_new_tokens', ec.max_new_tokens >= 1, 'must be >= 1'),
      ('sampling.max_prompt_tokens', config.sampling.max_prompt_tokens >= 1,
       'must be >= 1'),
  ])
  problems.check_few_shot(ec)
  reward = ec.reward or config.rewards.accuracy
  if reward and reward not in rewards_lib.REWARDS:
    raise errors.ConfigError(
        f'config.eval.reward={reward!r} is not a known reward; known: '
        f'{rewards_lib.REWARDS.names()}')


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Evaluates config.model on config.eval; returns done.json's figures."""
  t_start = time.perf_counter()
  validate_config(config)
  say = print if jax.process_index() == 0 else (lambda *_: None)
  workdir, mesh, model_cfg, graphdef, params, tokenizer = (
      loading.open_sampling_run(config, workdir))
  records = problems.eval_records(config)
  width = config.sampling.max_prompt_tokens
  problems.check_prompt_lengths(records, config.eval.template, tokenizer,
                                width, 'eval prompt')
  sampler = loading.make_sampler(
      graphdef, model_cfg, tokenizer, mesh, (width,),
      decode_segments=config.sampling.get('decode_segments', 1))
  source = config.model.hf_path or config.model.gguf_path
  stats = evaluate.evaluate_config(
      config.eval, sampler, params, tokenizer, records,
      accuracy_reward=config.eval.reward or config.rewards.accuracy,
      log=lambda s: say(f'{source}: {s}'))
  final: dict[str, Any] = {
      f'eval/{k}': v for k, v in evaluate.summarize(stats).items()}
  final['eval/few_shot'] = stats['few_shot']
  final['wall_time_s'] = time.perf_counter() - t_start
  final['source'] = str(source)
  if jax.process_index() == 0:
    report = {k: v for k, v in stats.items() if k != 'samples'}
    report['samples'] = stats['samples'][:8]
    run_records.write_text_atomic(
        workdir / EVAL_FILE,
        json.dumps(report, indent=1, ensure_ascii=False, default=float))
  run_records.mark_done(workdir, final)
  rewards_lib.shutdown_pool()
  return final

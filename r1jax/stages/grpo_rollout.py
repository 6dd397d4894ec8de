"""The host side of a GRPO step: sample groups, score them, stack them.

`Rollout` draws prompts, samples G completions each with the one `Sampler`
(its log-probs are the old policy's), decodes and scores them with
`rewards.compute_rewards`, and with DAPO dynamic sampling resamples until
the step has enough groups whose rewards differ. `to_device` turns the
host rows into the global arrays the jitted update takes.
"""

from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np

from r1jax import parallel
from r1jax import reasoning_stats
from r1jax import rewards as rewards_lib
from r1jax import rl
from r1jax.rl import dynamic_sampling
from r1jax.run import console
from r1jax.sampling import FINISH_STOP
from r1jax.sampling import Sampler


def _decode(tokenizer, tokens_BxL, lengths_B, finish_B) -> list[str]:
  return tokenizer.decode_completions(tokens_BxL, lengths_B,
                                      finish_B == FINISH_STOP)


class Rollout:
  """Sampling + rewards of one step on this host (numpy, prompt-major rows)."""

  def __init__(self, config, sampler: Sampler, tokenizer, batcher):
    self.config = config
    self.sampler = sampler
    self.tokenizer = tokenizer
    self.batcher = batcher
    self.weights = config.rewards.weights.to_dict()
    self.options = config.rewards.options.to_dict()
    self.accuracy = config.rewards.accuracy
    # ReMax: the baseline is the reward of each prompt's greedy answer.
    self.greedy_baseline = 'baseline_P' in rl.ADVANTAGES.inputs(
        config.rl.advantage)

  def _one_round(self, params, key, timer: console.Timer) -> dict[str, Any]:
    sc, g = self.config.sampling, self.config.rl.group_size
    batch = next(self.batcher)
    with timer('sample'):
      out = self.sampler.generate(
          params, (batch['prompt_ids'], batch['prompt_mask']),
          max_new_tokens=sc.max_new_tokens, n=g, temperature=sc.temperature,
          top_p=sc.top_p, top_k=sc.top_k, seed=key,
          logprobs_nucleus=bool(sc.get('logprobs_nucleus', False)))
      host = {name: parallel.host_rows(x) for name, x in out._asdict().items()}
    examples = [ex for ex in batch['examples'] for _ in range(g)]
    with timer('reward'):
      texts = _decode(self.tokenizer, host['tokens'], host['lengths'],
                      host['finish_reason'])
      total_B, per_reward, reward_metrics = rewards_lib.compute_rewards(
          texts, examples, self.weights, self.options,
          lengths_B=host['lengths'])
    if self.greedy_baseline:  # timed as sampling
      with timer('sample'):
        greedy = self.sampler.generate(
            params, (batch['prompt_ids'], batch['prompt_mask']),
            max_new_tokens=sc.max_new_tokens, n=1, temperature=0.0,
            seed=key)
        g_lengths = parallel.host_rows(greedy.lengths)
        g_texts = _decode(self.tokenizer, parallel.host_rows(greedy.tokens),
                          g_lengths, parallel.host_rows(greedy.finish_reason))
        host['baseline'] = rewards_lib.compute_rewards(
            g_texts, batch['examples'], self.weights, self.options,
            lengths_B=g_lengths)[0]
    host.update(texts=texts, examples=examples, rewards=total_B,
                per_reward=per_reward, reward_metrics=reward_metrics)
    return host

  def __call__(self, params, key, timer: console.Timer) -> dict[str, Any]:
    """A rollout of prompts_per_step groups; DAPO-filtered when configured."""
    rc = self.config.rl
    g, p_local = rc.group_size, rc.prompts_per_step // jax.process_count()
    rounds, kept, spare = 0, [], []
    while True:
      r = self._one_round(params, jax.random.fold_in(key, rounds), timer)
      rounds += 1
      if not rc.dynamic_sampling:
        kept = [(r, i) for i in range(p_local)]
        break
      spread = dynamic_sampling.has_spread(r['rewards'].reshape(-1, g))
      kept += [(r, i) for i in np.flatnonzero(spread)]
      spare += [(r, i) for i in np.flatnonzero(~spread)]
      missing = max(p_local - len(kept), 0)
      if jax.process_count() > 1:  # every host runs the same number of rounds
        missing = int(np.max(multihost_utils.process_allgather(
            np.int32(missing))))
      if missing == 0 or rounds >= rc.max_sampling_rounds:
        break
    num_informative = min(len(kept), p_local)
    # Short of informative groups after the last round: fill with
    # zero-spread ones (zero advantage, so they add no policy gradient).
    groups = (kept + spare)[:p_local]
    out = _stack_groups(groups, g)
    out['sampling_rounds'] = rounds
    out['frac_informative_groups'] = num_informative / p_local
    return out


def _stack_groups(groups, g: int) -> dict[str, Any]:
  """Concatenates the rows of the chosen (round, group index) pairs."""
  array_keys = ('tokens', 'mask', 'logprobs', 'lengths', 'finish_reason',
                'prompt_tokens', 'prompt_mask', 'rewards')
  out: dict[str, Any] = {k: np.concatenate(
      [r[k][i * g:(i + 1) * g] for r, i in groups]) for k in array_keys}
  out['texts'] = [t for r, i in groups for t in r['texts'][i * g:(i + 1) * g]]
  out['examples'] = [e for r, i in groups
                     for e in r['examples'][i * g:(i + 1) * g]]
  if 'baseline' in groups[0][0]:
    out['baseline'] = np.asarray([r['baseline'][i] for r, i in groups],
                                 np.float32)
  names = groups[0][0]['per_reward']
  out['per_reward'] = {n: np.concatenate(
      [r['per_reward'][n][i * g:(i + 1) * g] for r, i in groups]) for n in names}
  # Reward means of what is trained on (compute_rewards' own are per round).
  out['reward_metrics'] = {f'reward/{n}': float(v.mean())
                           for n, v in out['per_reward'].items()}
  out['reward_metrics']['reward/total'] = float(out['rewards'].mean())
  for r, _ in groups[:1]:
    for k, v in r['reward_metrics'].items():
      if k.count('/') > 1:  # counters such as reward/math/timeouts
        out['reward_metrics'][k] = v
  return out


def rollout_metrics(host: dict[str, Any], config) -> dict[str, float]:
  """Host-side metrics of one rollout (rewards, lengths, truncation)."""
  g = config.rl.group_size
  lengths = host['lengths'].astype(np.float64)
  truncated = host['finish_reason'] != 0
  rewards_PxG = host['rewards'].reshape(-1, g)
  m = dict(host['reward_metrics'])
  m['reward'] = float(host['rewards'].mean())
  acc = config.rewards.accuracy
  if acc and acc in host['per_reward']:
    m['accuracy'] = float(host['per_reward'][acc].mean())
  if 'format' in host['per_reward']:
    m['format'] = float(host['per_reward']['format'].mean())
  m['response_length_mean'] = float(lengths.mean())
  m['response_length_max'] = float(lengths.max())
  m['frac_truncated'] = float(truncated.mean())
  m['frac_zero_spread_groups'] = float(
      (~dynamic_sampling.has_spread(rewards_PxG)).mean())
  m['sampling_rounds'] = float(host['sampling_rounds'])
  m['frac_informative_groups'] = float(host['frac_informative_groups'])
  # Reflection as the R1 paper tracks it (reflective words, re-checked steps).
  m.update(reasoning_stats.reflection_stats(host['texts']))
  return m


def completion_records(host: dict[str, Any], config, n: int = 4) -> list[dict]:
  """Up to `n` completions of a rollout, from different groups, with rewards."""
  g = config.rl.group_size
  out = []
  for j, i in enumerate(range(0, len(host['texts']), g)[:n]):
    i += j % g  # a different sample index in each group
    example = host['examples'][i]
    out.append({
        'problem': str(example.get('problem', '')),
        'answer': str(example.get('answer', '')),
        'completion': host['texts'][i],
        'reward': float(host['rewards'][i]),
        'rewards': {k: float(v[i]) for k, v in host['per_reward'].items()},
        'length': int(host['lengths'][i]),
        'truncated': bool(host['finish_reason'][i] != 0),
    })
  return out


def to_device(host: dict[str, Any], config, mesh) -> dict[str, jax.Array]:
  """The rollout as global arrays (each host gives its own rows)."""
  sample_mask = host['mask'].astype(bool)
  loss_mask = sample_mask
  if config.rl.mask_truncated:  # DAPO overlong filtering
    loss_mask = sample_mask & (host['finish_reason'] == 0)[:, None]
  arrays = {
      'prompt_tokens': host['prompt_tokens'].astype(np.int32),
      'prompt_mask': host['prompt_mask'].astype(bool),
      'tokens': host['tokens'].astype(np.int32),
      'sample_mask': sample_mask,
      'mask': loss_mask,
      'old_logp': host['logprobs'].astype(np.float32),
      'rewards': host['rewards'].astype(np.float32),
      'lengths': host['lengths'].astype(np.float32),
  }
  if 'baseline' in host:
    arrays['baseline'] = host['baseline']
  return parallel.host_local_to_global(arrays, mesh)

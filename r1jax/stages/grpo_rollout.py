"""The host side of a GRPO step: sample groups, score them, stack them.

`Rollout` draws prompts, samples G completions each with the one `Sampler`
(its log-probs are those of the policy that sampled), decodes and scores
them with `rewards.compute_rewards`, and with DAPO dynamic sampling
resamples until the step has enough groups whose rewards differ. It returns
a `HostRollout`; `grpo_update.make_batch` puts it on the mesh.
"""

import dataclasses

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
from r1jax.sampling import SampleOutput
from r1jax.sampling import Sampler


@dataclasses.dataclass(frozen=True)
class HostRollout:
  """One step's rollout on this host, rows prompt-major (B = P x G).

  Attributes:
    sample: the sampler's output for these rows, as numpy (tokens, mask,
      logprobs, lengths, finish_reason, prompt_tokens, prompt_mask; see
      `sampling.SampleOutput`).
    rewards: float32[B], the weighted total reward.
    per_reward: reward name -> float32[B], unweighted.
    reward_metrics: 'reward/<name>' and 'reward/total' means of these rows,
      and the counters rewards report ('reward/<name>/<counter>').
    texts: the decoded completions.
    examples: the dataset record each row answers.
    baseline: float32[P], the reward of each prompt's greedy answer, for an
      estimator with the input 'baseline_P' (ReMax); else None.
    sampling_rounds: rounds sampled (more than 1 only with DAPO's dynamic
      sampling).
    frac_informative_groups: the share of the P groups with reward spread
      that the rounds found (1 without dynamic sampling).
  """
  sample: SampleOutput
  rewards: np.ndarray
  per_reward: dict[str, np.ndarray]
  reward_metrics: dict[str, float]
  texts: list[str]
  examples: list[dict]
  baseline: np.ndarray | None = None
  sampling_rounds: int = 1
  frac_informative_groups: float = 1.0


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

  def _one_round(self, params, key, timer: console.Timer) -> HostRollout:
    sc, g = self.config.sampling, self.config.rl.group_size
    batch = next(self.batcher)
    with timer('sample'):
      out = self.sampler.generate(
          params, (batch['prompt_ids'], batch['prompt_mask']),
          max_new_tokens=sc.max_new_tokens, n=g, temperature=sc.temperature,
          top_p=sc.top_p, top_k=sc.top_k, seed=key,
          logprobs_nucleus=bool(sc.get('logprobs_nucleus', False)))
      sample = SampleOutput(*(parallel.host_rows(x) for x in out))
    examples = [ex for ex in batch['examples'] for _ in range(g)]
    with timer('reward'):
      texts = _decode(self.tokenizer, sample.tokens, sample.lengths,
                      sample.finish_reason)
      total_B, per_reward, reward_metrics = rewards_lib.compute_rewards(
          texts, examples, self.weights, self.options,
          lengths_B=sample.lengths)
    baseline = None
    if self.greedy_baseline:  # timed as sampling
      with timer('sample'):
        greedy = self.sampler.generate(
            params, (batch['prompt_ids'], batch['prompt_mask']),
            max_new_tokens=sc.max_new_tokens, n=1, temperature=0.0,
            seed=key)
        g_lengths = parallel.host_rows(greedy.lengths)
        g_texts = _decode(self.tokenizer, parallel.host_rows(greedy.tokens),
                          g_lengths, parallel.host_rows(greedy.finish_reason))
        baseline = rewards_lib.compute_rewards(
            g_texts, batch['examples'], self.weights, self.options,
            lengths_B=g_lengths)[0]
    return HostRollout(sample=sample, rewards=total_B, per_reward=per_reward,
                       reward_metrics=reward_metrics, texts=texts,
                       examples=examples, baseline=baseline)

  def __call__(self, params, key, timer: console.Timer) -> HostRollout:
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
      spread = dynamic_sampling.has_spread(r.rewards.reshape(-1, g))
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
    return _stack_groups(groups, g, sampling_rounds=rounds,
                         frac_informative_groups=num_informative / p_local)


def _stack_groups(groups, g: int, **counts) -> HostRollout:
  """The rows of the chosen (round, group index) pairs, in that order."""
  rows = lambda x, i: x[i * g:(i + 1) * g]
  sample = SampleOutput(*(np.concatenate([rows(r.sample[f], i)
                                          for r, i in groups])
                          for f in range(len(SampleOutput._fields))))
  rewards = np.concatenate([rows(r.rewards, i) for r, i in groups])
  names = groups[0][0].per_reward
  per_reward = {n: np.concatenate([rows(r.per_reward[n], i)
                                   for r, i in groups]) for n in names}
  # Reward means of what is trained on (compute_rewards' own are per round).
  reward_metrics = {f'reward/{n}': float(v.mean())
                    for n, v in per_reward.items()}
  reward_metrics['reward/total'] = float(rewards.mean())
  for k, v in groups[0][0].reward_metrics.items():
    if k.count('/') > 1:  # counters such as reward/math/timeouts
      reward_metrics[k] = v
  baseline = None
  if groups[0][0].baseline is not None:
    baseline = np.asarray([r.baseline[i] for r, i in groups], np.float32)
  return HostRollout(
      sample=sample, rewards=rewards, per_reward=per_reward,
      reward_metrics=reward_metrics,
      texts=[t for r, i in groups for t in rows(r.texts, i)],
      examples=[e for r, i in groups for e in rows(r.examples, i)],
      baseline=baseline, **counts)


def rollout_metrics(host: HostRollout, config) -> dict[str, float]:
  """Host-side metrics of one rollout (rewards, lengths, truncation)."""
  g = config.rl.group_size
  lengths = host.sample.lengths.astype(np.float64)
  truncated = host.sample.finish_reason != 0
  rewards_PxG = host.rewards.reshape(-1, g)
  m = dict(host.reward_metrics)
  m['reward'] = float(host.rewards.mean())
  acc = config.rewards.accuracy
  if acc and acc in host.per_reward:
    m['accuracy'] = float(host.per_reward[acc].mean())
  if 'format' in host.per_reward:
    m['format'] = float(host.per_reward['format'].mean())
  m['response_length_mean'] = float(lengths.mean())
  m['response_length_max'] = float(lengths.max())
  m['frac_truncated'] = float(truncated.mean())
  m['frac_zero_spread_groups'] = float(
      (~dynamic_sampling.has_spread(rewards_PxG)).mean())
  m['sampling_rounds'] = float(host.sampling_rounds)
  m['frac_informative_groups'] = float(host.frac_informative_groups)
  # Reflection as the R1 paper tracks it (reflective words, re-checked steps).
  m.update(reasoning_stats.reflection_stats(host.texts))
  return m


def completion_records(host: HostRollout, config, n: int = 4) -> list[dict]:
  """Up to `n` completions of a rollout, from different groups, with rewards."""
  g = config.rl.group_size
  out = []
  for j, i in enumerate(range(0, len(host.texts), g)[:n]):
    i += j % g  # a different sample index in each group
    example = host.examples[i]
    out.append({
        'problem': str(example.get('problem', '')),
        'answer': str(example.get('answer', '')),
        'completion': host.texts[i],
        'reward': float(host.rewards[i]),
        'rewards': {k: float(v[i]) for k, v in host.per_reward.items()},
        'length': int(host.sample.lengths[i]),
        'truncated': bool(host.sample.finish_reason[i] != 0),
    })
  return out

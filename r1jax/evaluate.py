"""Evaluation: pass@1 over k samples, unbiased pass@k, cons@k (majority vote).

The vote pools equivalent answers (`r1jax.rewards.answers_equal`: '1/2' and
'0.5' are one vote), as R1's cons@64 does.

    stats = evaluate_problems(sampler, params, tokenizer, records,
                              template='r1_zero', num_samples=4,
                              temperature=0.6, top_p=0.95, max_new_tokens=256)

`records` are dataset records with an `answer` (and task fields such as
`numbers` / `target`); correctness is decided by a reward function from the
reward library (`accuracy_reward`, e.g. 'math', 'arithmetic', 'countdown').

The command, `python -m r1jax.evaluate --checkpoint=... --datasets=...`, is
r1jax/evaluate_cli.py.
"""

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from r1jax import parallel
from r1jax import reasoning_stats


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021).

  1 - C(n - c, k) / C(n, k), computed as a stable product.
  """
  if k > n:
    raise ValueError(f'k={k} exceeds the number of samples n={n}')
  if n - c < k:
    return 1.0
  return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _default_equal(a: str, b: str) -> bool:
  from r1jax.rewards.math_answer import answers_equal  # pylint: disable=g-import-not-at-top
  return answers_equal(a, b) or answers_equal(b, a)


def vote_clusters(
    answers: Sequence[str | None],
    *,
    equal: Callable[[str, str], bool] | None = None,
) -> list[tuple[str, int]]:
  """Groups answers into equivalence classes: [(representative, votes)].

  Classes are in order of first appearance and a class is represented by its
  earliest answer. None and empty (or all-whitespace) answers are dropped.
  Identical strings are counted first, so `equal` is only asked about the
  distinct strings (it may be slow): a new distinct string joins the first
  class whose representative it equals, else it starts a class.
  """
  equal = _default_equal if equal is None else equal
  counts: dict[str, int] = {}
  for a in answers:
    if a is not None and a.strip():
      counts[a] = counts.get(a, 0) + 1   # dicts keep first-appearance order
  clusters: list[list] = []
  for a, n in counts.items():
    for cluster in clusters:
      if equal(a, cluster[0]):
        cluster[1] += n
        break
    else:
      clusters.append([a, n])
  return [(rep, n) for rep, n in clusters]


def majority_vote(
    answers: Sequence[str | None],
    *,
    equal: Callable[[str, str], bool] | None = None,
) -> str | None:
  """The most voted answer, votes pooled over equivalent answers (cons@k).

  `equal(a, b)` decides equivalence; by default the reward library's fast
  math check `answers_equal` (tried both ways), so '1/2' and '0.5' are one
  vote; pass `equal=str.__eq__` for exact strings. Ties go to the class that
  appeared first, and the earliest answer of the winning class is returned.
  None / empty answers never win; all-empty gives None.
  """
  clusters = vote_clusters(answers, equal=equal)
  if not clusters:
    return None
  best = max(n for _, n in clusters)
  return next(rep for rep, n in clusters if n == best)


def evaluate_problems(
    sampler,
    params,
    tokenizer,
    records: Sequence[Mapping[str, Any]],
    *,
    template: str = 'r1_zero',
    num_samples: int = 1,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    accuracy_reward: str | None = None,
    format_reward: str = 'format',
    batch_size: int = 64,
    seed: int = 0,
    ks: Sequence[int] = (),
    target_language: str = 'en',
    return_completions: bool = False,
) -> dict[str, Any]:
  """Samples `num_samples` completions per record and scores them.

  Returns pass@1 (mean correctness over all samples), pass@k for each k in
  `ks` (k <= num_samples), cons@{num_samples} when num_samples > 1 (the
  `majority_vote` over extracted answers, equivalent answers pooled, scored by
  the accuracy reward), the strict-format rate, the language consistency of
  the chain of thought (share of its words in the record's
  `target_language`, else `target_language`), the mean completion length in
  tokens, the reflection figures of `r1jax.reasoning_stats` (reflection_rate,
  reflective_words, recheck_rate, correction_rate, step_rate), `num_problems`,
  `num_samples` and a few sample texts (`samples`). With
  `return_completions`, also 'completions' (every text, record-major) and
  'correct' ([records, samples] 0/1). `summarize(stats)` keeps only the
  float metrics.
  """
  # Imported here: the reward library starts worker processes lazily and the
  # template module pulls in the tokenizer; evaluation is optional for callers.
  from r1jax.data.templates import prompt_ids  # pylint: disable=g-import-not-at-top
  from r1jax import rewards as rw  # pylint: disable=g-import-not-at-top

  correct = np.zeros((len(records), num_samples), np.float32)
  formatted = np.zeros((len(records), num_samples), np.float32)
  language = np.zeros((len(records), num_samples), np.float32)
  lengths = np.zeros((len(records), num_samples), np.float32)
  answers: list[list[str | None]] = [[] for _ in records]
  texts: list[str] = []
  every_text: list[str] = []
  per_batch = max(1, batch_size // num_samples)
  for start in range(0, len(records), per_batch):
    chunk = list(records[start:start + per_batch])
    prompts = [prompt_ids(template, r['problem'], tokenizer) for r in chunk]
    out = sampler.generate(params, prompts, max_new_tokens=max_new_tokens,
                           n=num_samples, temperature=temperature, top_p=top_p,
                           seed=seed + start)
    tokens = parallel.host_rows(out.tokens)
    mask = parallel.host_rows(out.mask)
    completions = [tokenizer.decode(t[m]) for t, m in zip(tokens, mask)]
    examples = [r for r in chunk for _ in range(num_samples)]
    reward_name = accuracy_reward or chunk[0].get('task') or 'math'
    acc = rw.REWARDS.get(reward_name)(completions, examples)
    fmt = rw.REWARDS.get(format_reward)(completions, examples)
    # A record's target_language wins; a chain of thought with no words
    # (only arithmetic) counts as consistent.
    lang = rw.REWARDS.get('language')(completions, examples,
                                      target_language=target_language,
                                      empty_score=1.0)
    rows = slice(start, start + len(chunk))
    correct[rows] = np.asarray(acc, np.float32).reshape(len(chunk), num_samples)
    formatted[rows] = np.asarray(fmt, np.float32).reshape(len(chunk), num_samples)
    language[rows] = np.asarray(lang, np.float32).reshape(len(chunk), num_samples)
    lengths[rows] = parallel.host_rows(out.lengths).astype(np.float32).reshape(
        len(chunk), num_samples)
    for i, text in enumerate(completions):
      answers[start + i // num_samples].append(rw.extract_answer(text))
    if len(texts) < 4:
      texts.extend(completions[:4 - len(texts)])
    every_text.extend(completions)

  stats: dict[str, Any] = {
      'pass@1': float(correct.mean()),
      'format_rate': float((formatted >= 1.0).mean()),
      'language_consistency': float(language.mean()),
      'mean_length': float(lengths.mean()),
      'num_problems': len(records),
      'num_samples': num_samples,
  }
  stats.update(reasoning_stats.reflection_stats(every_text))
  for k in ks:
    if k <= num_samples:
      c = correct.sum(axis=1).astype(int)
      stats[f'pass@{k}'] = float(np.mean(
          [pass_at_k(num_samples, int(ci), k) for ci in c]))
  if num_samples > 1:
    reward_name = accuracy_reward or records[0].get('task') or 'math'
    votes = [majority_vote(a) for a in answers]
    voted = [f'<answer>{v}</answer>' if v is not None else '' for v in votes]
    cons = rw.REWARDS.get(reward_name)(voted, list(records))
    stats[f'cons@{num_samples}'] = float(np.mean(cons))
  stats['samples'] = texts
  if return_completions:
    stats['completions'] = every_text
    stats['correct'] = correct
  return stats


def summarize(stats: Mapping[str, Any]) -> dict[str, float]:
  """Only the float metrics of `stats` (pass@k, cons@k, rates, lengths).

  Drops the counts (`num_problems`, `num_samples`) and the sample texts, so
  the result can go straight to a metric writer.
  """
  return {k: float(v) for k, v in stats.items()
          if isinstance(v, (float, np.floating))}


def format_stats(stats: Mapping[str, Any]) -> str:
  keys = [k for k in stats if k.startswith(('pass@', 'cons@'))]
  keys += ['format_rate', 'language_consistency', 'mean_length']
  return ', '.join(f'{k} {stats[k]:.3f}' for k in keys if k in stats and
                   isinstance(stats[k], float) and math.isfinite(stats[k]))


if __name__ == '__main__':
  # The command lives in evaluate_cli.py (flags, checkpoint kinds, reports).
  import sys  # pylint: disable=g-import-not-at-top
  from r1jax import evaluate_cli  # pylint: disable=g-import-not-at-top
  sys.exit(evaluate_cli.main())

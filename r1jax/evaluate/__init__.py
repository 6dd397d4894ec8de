"""Evaluation: pass@1 over k samples, unbiased pass@k, cons@k (majority vote).

The vote pools equivalent answers (`r1jax.rewards.answers_equal`: '1/2' and
'0.5' are one vote), as R1's cons@64 does.

    stats = evaluate_problems(sampler, params, tokenizer, records,
                              template='r1_zero', num_samples=4,
                              temperature=0.6, top_p=0.95, max_new_tokens=256)

`records` are dataset records with an `answer` (and task fields such as
`numbers` / `target`); correctness is decided by a reward function from the
reward library (`accuracy_reward`, e.g. 'math', 'arithmetic', 'countdown').
Code records (MBPP, HumanEval: task 'code') are scored by the 'code' reward,
which runs each completion's program against the record's tests in the
sandbox; pass@1 and pass@k are then the usual code metrics, and there is no
cons@k (a program has no final answer to vote on).

`evaluate_model` is the one held-out evaluation every caller shares (the
training stages' evals, the ability check of the tiny base, and the command
`python -m r1jax.evaluate --checkpoint=... --datasets=...`, r1jax/evaluate_cli.py):
records split by task, each task scored by its own reward, a greedy pass,
the task-weighted means, and the mean over processes in a multi-host run.

Few-shot evaluation: a record's prompt is built with
`templates.record_prompt_ids`, so the worked examples a record carries
(`shots`, put there by `r1jax.run.problems.eval_records` from eval.few_shot,
or by the evaluation command's --few_shot) go in front of its problem in the
template's style; a record without them gets today's zero-shot prompt.
`evaluate_config` checks that the records carry eval.few_shot shots each.
"""

from typing import Any, Callable, Mapping, Sequence

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from r1jax import errors
from r1jax import parallel
from r1jax import reasoning_stats
from r1jax import rewards as rw
from r1jax.data.templates import record_prompt_ids
from r1jax.rewards.math_answer import answers_equal
from r1jax.sampling import FINISH_STOP


# Rewards whose completions have no final answer to take a majority vote on.
VOTELESS_REWARDS = frozenset({'code'})


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
    on_batch: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
  """Samples `num_samples` completions per record and scores them.

  Returns pass@1 (mean correctness over all samples), pass@k for each k in
  `ks` (k <= num_samples), cons@{num_samples} when num_samples > 1 (the
  `majority_vote` over extracted answers, equivalent answers pooled, scored by
  the accuracy reward; not for `VOTELESS_REWARDS`), the strict-format rate,
  the language consistency of the chain of thought (share of its words in the
  record's `target_language`, else `target_language`), the mean completion
  length in tokens, the reflection figures of `r1jax.reasoning_stats`
  (reflection_rate, reflective_words, recheck_rate, correction_rate,
  check_rate, step_rate), `num_problems`, `num_samples` and a few sample texts
  (`samples`); with few-shot records (`shots`), shot_answer_rate: the share of
  samples whose wrong answer is one of the worked examples' answers. With
  `return_completions`, also 'completions' (every text, record-major) and
  'correct' ([records, samples] 0/1). `summarize(stats)`
  keeps only the float metrics. `on_batch(n, pass_at_1)`, when given, is
  called after each sampler batch with its number of records and the pass@1 so
  far.
  """

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
    prompts = [record_prompt_ids(template, r, tokenizer) for r in chunk]
    out = sampler.generate(params, prompts, max_new_tokens=max_new_tokens,
                           n=num_samples, temperature=temperature, top_p=top_p,
                           seed=seed + start)
    completions = tokenizer.decode_completions(
        parallel.host_rows(out.tokens), parallel.host_rows(out.lengths),
        parallel.host_rows(out.finish_reason) == FINISH_STOP)
    examples = [r for r in chunk for _ in range(num_samples)]
    reward_name = accuracy_reward or chunk[0].get('task') or 'math'
    acc = rw.REWARDS.get(reward_name)(completions, examples)
    fmt = rw.REWARDS.get(format_reward)(completions, examples)
    # A record's target_language wins; a chain of thought with no words
    # (only arithmetic) counts as consistent (-1 here, a score no worded
    # one gets: `worded` below).
    lang = rw.REWARDS.get('language')(completions, examples,
                                      target_language=target_language,
                                      empty_score=-1.0)
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
    if on_batch is not None:
      on_batch(len(chunk), float(correct[:start + len(chunk)].mean()))

  worded = language >= 0
  language = np.where(worded, language, 1.0)
  stats: dict[str, Any] = {
      'pass@1': float(correct.mean()),
      'format_rate': float((formatted >= 1.0).mean()),
      'language_consistency': float(language.mean()),
      # Over the chains of thought that have words at all (1 when none has):
      # a model that writes only arithmetic cannot mix languages.
      'language_consistency_worded': (float(language[worded].mean())
                                      if worded.any() else 1.0),
      'mean_length': float(lengths.mean()),
      'num_problems': len(records),
      'num_samples': num_samples,
  }
  stats.update(reasoning_stats.reflection_stats(every_text))
  # A mixed-language set: pass@1 and consistency per prompt language.
  langs = np.asarray([r.get('target_language') or '' for r in records])
  if len(set(langs.tolist())) > 1:
    for name in sorted(set(langs.tolist())):
      rows = langs == name
      key = name or 'unset'
      stats[f'{key}/pass@1'] = float(correct[rows].mean())
      stats[f'{key}/language_consistency'] = float(language[rows].mean())
      w = worded[rows]
      stats[f'{key}/language_consistency_worded'] = (
          float(language[rows][w].mean()) if w.any() else 1.0)
  if any(r.get('shots') for r in records):
    # Few-shot prompts: the share of samples that answer a worked example's
    # answer instead of their own problem's (a wrong answer copied).
    copied = [[a is not None and not ok and a.strip() in {
        str(s.get('answer', '')).strip() for s in r.get('shots') or ()}
               for a, ok in zip(ans, row)]
              for r, ans, row in zip(records, answers, correct)]
    stats['shot_answer_rate'] = float(np.mean(copied))
  for k in ks:
    if k <= num_samples:
      c = correct.sum(axis=1).astype(int)
      stats[f'pass@{k}'] = float(np.mean(
          [pass_at_k(num_samples, int(ci), k) for ci in c]))
  reward_name = accuracy_reward or (records[0].get('task') if len(records)
                                    else None) or 'math'
  if num_samples > 1 and reward_name not in VOTELESS_REWARDS:
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


def evaluate_model(sampler, params, tokenizer, records: Sequence[dict], *,
                   template: str, num_samples: int, temperature: float,
                   top_p: float, max_new_tokens: int, batch_size: int = 64,
                   seed: int = 0, ks: Sequence[int] = (), greedy: bool = False,
                   accuracy_reward: str = '', default_task: str = 'math',
                   on_batch: Callable[[int, float], None] | None = None
                   ) -> dict[str, Any]:
  """Held-out metrics of `params`, per task and over all `records`.

  Records are grouped by their 'task' (`default_task` for records without
  one, e.g. a named data set) and each group is scored by
  `evaluate_problems` with the group's reward (`accuracy_reward` overrides
  it, unless it is '' or 'task', the reward of each record's own task).
  Keys: every float metric of `evaluate_problems` (pass@1, pass@k for k in
  `ks`, cons@<num_samples>, format_rate, language_consistency,
  mean_length, reflection figures) as the problem-weighted mean over tasks;
  greedy_accuracy (temperature 0, when `greedy`); '<task>/<metric>' per task;
  'by_task' ({task: metrics + num_problems}); 'samples' (a few completions);
  num_problems, num_samples and few_shot (the most worked examples in front
  of a problem: a record's `shots`, see `few_shot_count`). In a multi-host
  run each process scores an equal share and the means are averaged over
  processes.
  """
  nproc = jax.process_count()
  if nproc > 1:  # each process scores its own equal share
    records = list(records)[:len(records) - len(records) % nproc]
    records = records[jax.process_index()::nproc]
  by_task: dict[str, list[dict]] = {}
  for r in records:
    by_task.setdefault(r.get('task') or default_task, []).append(r)
  stats: dict[str, Any] = {'samples': [], 'by_task': {}}
  weighted: dict[str, list[tuple[int, float]]] = {}
  for task, recs in by_task.items():
    kw = dict(template=template, max_new_tokens=max_new_tokens,
              accuracy_reward=(recs[0].get('task') or 'math')
              if accuracy_reward in ('', rw.by_task.NAME) else accuracy_reward,
              batch_size=batch_size, seed=seed)
    s = evaluate_problems(sampler, params, tokenizer, recs,
                          num_samples=num_samples, temperature=temperature,
                          top_p=top_p, ks=ks, on_batch=on_batch, **kw)
    if greedy and temperature == 0:
      s['greedy_accuracy'] = s['pass@1']
    elif greedy:
      s['greedy_accuracy'] = evaluate_problems(
          sampler, params, tokenizer, recs, num_samples=1, temperature=0.0,
          top_p=1.0, on_batch=on_batch, **kw)['pass@1']
    floats = summarize(s)
    for k, v in floats.items():
      stats[f'{task}/{k}'] = v
      weighted.setdefault(k, []).append((len(recs), v))
    stats['by_task'][task] = {**floats, 'num_problems': len(recs)}
    stats['samples'].extend(s['samples'][:2])
  for k, pairs in weighted.items():
    stats[k] = sum(n * v for n, v in pairs) / sum(n for n, _ in pairs)
  if nproc > 1:  # equal shares: the global mean is the mean of the means
    names = sorted(k for k, v in stats.items() if isinstance(v, float))
    local = np.asarray([stats[k] for k in names], np.float64)
    means = np.asarray(multihost_utils.process_allgather(local)).mean(axis=0)
    stats.update({k: float(v) for k, v in zip(names, means)})
  stats['num_problems'] = len(records) * nproc
  stats['num_samples'] = num_samples
  stats['few_shot'] = few_shot_count(records)
  return stats


def few_shot_count(records: Sequence[Mapping[str, Any]]) -> int:
  """The most worked examples (`shots`) any record puts before its problem."""
  return max((len(r.get('shots') or ()) for r in records), default=0)


def evaluate_config(ec: ml_collections.ConfigDict, sampler, params, tokenizer,
                    records: Sequence[dict], *, accuracy_reward: str = '',
                    log: Callable[[str], None] = print) -> dict[str, Any]:
  """`evaluate_model` with a stage's config.eval section (template,
  num_samples, temperature, top_p, max_new_tokens, batch_size, seed, ks,
  greedy, reward, dataset, few_shot), and one line of the main figures to
  `log`. With eval.few_shot = k, every record must carry its k worked
  examples (`problems.eval_records` puts them there): EvalError otherwise,
  never a silent zero-shot evaluation."""
  n_shots = ec.get('few_shot', 0)
  carried = sorted({len(r.get('shots') or ()) for r in records})
  if records and carried != [n_shots]:
    raise errors.EvalError(
        f'config.eval.few_shot={n_shots}, but the held-out records carry '
        f'{" or ".join(map(str, carried))} worked examples each: build them '
        'with r1jax.run.problems.eval_records(config)')
  stats = evaluate_model(
      sampler, params, tokenizer, records, template=ec.template,
      num_samples=ec.num_samples, temperature=ec.temperature, top_p=ec.top_p,
      max_new_tokens=ec.max_new_tokens, batch_size=ec.batch_size,
      seed=ec.seed, ks=tuple(ec.get('ks', ())), greedy=ec.get('greedy', False),
      accuracy_reward=accuracy_reward or ec.get('reward', ''),
      default_task=ec.dataset or 'math')
  shown = [k for k in ('pass@1', f'cons@{ec.num_samples}', 'greedy_accuracy',
                       'format_rate', 'language_consistency', 'mean_length',
                       'reflection_rate', 'recheck_rate')
           if k in stats]
  shot_text = f', {n_shots}-shot' if n_shots else ''
  log(f'held-out ({len(records)} problems x {ec.num_samples} samples, '
      f'template {ec.template!r}{shot_text}, temperature {ec.temperature}): ' +
      ' | '.join(f'{k} {stats[k]:.3f}' for k in shown))
  return stats

r"""Rejection sampling: R1's stage 3 data, and sequence-level distillation.

    python -m r1jax.train --config=experiments/rejection.py --workdir=runs/rs

From a checkpoint (an HF directory, a GGUF file, or the workdir of an earlier
stage), sample `rejection.num_samples` completions per prompt, then keep a
completion only if it passes every filter, in this order:

  correct      the accuracy reward (rewards.accuracy) gives it full marks
  format       strict <think>..</think> <answer>..</answer> (filters.format)
  language     chain-of-thought language consistency >= filters.min_language
               (R1 drops mixed-language traces)
  length       finished with EOS, not cut at the budget (filters.
               drop_truncated), and at most filters.max_tokens tokens
  code         no code block (```) unless the prompt's task is code
  repetition   at most filters.max_repeat of its word n-grams repeated
  unique       not a duplicate (whitespace-normalised) of a kept one
  per_prompt   at most filters.max_per_prompt kept per prompt

Writes WORKDIR/sft.jsonl ({prompt, completion, id, answer} per line: the SFT
stage reads it with data.source='jsonl', data.path=WORKDIR) and
WORKDIR/rejection_report.json (how many were left after each filter), and
prints the report as a table. Sampling is written to WORKDIR/samples.jsonl
chunk by chunk, so a run killed half-way continues from the chunks it has.
"""

import collections
import json
import re
import time
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from r1jax import errors
from r1jax import metrics as metrics_lib
from r1jax import parallel
from r1jax import rewards as rewards_lib
from r1jax.data.templates import prompt_ids, render_prompt
from r1jax.rewards import format as format_lib
from r1jax.rewards import language as language_lib
from r1jax.run import checks
from r1jax.run import console
from r1jax.run import loading
from r1jax.run import problems
from r1jax.run import records as run_records
from r1jax.sampling import FINISH_STOP

SFT_FILE = run_records.SFT_FILE
SAMPLES_FILE = run_records.SAMPLES_FILE
REPORT_FILE = run_records.REPORT_FILE
FILTERS = ('correct', 'format', 'language', 'length', 'code', 'repetition',
           'unique', 'per_prompt')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails at start-up, before any compile, with one line naming the key."""
  rc, fc, sc = config.rejection, config.filters, config.sampling
  datasets = problems.dataset_names()
  checks.check(config, [
      ('rejection.num_samples', rc.num_samples >= 1, 'must be >= 1'),
      ('rejection.num_prompts', rc.num_prompts >= 0, 'must be >= 0 (0: all)'),
      ('sampling.temperature', sc.temperature >= 0, 'must be >= 0'),
      ('sampling.top_p', 0 < sc.top_p <= 1, 'must be in (0, 1]'),
      ('sampling.max_prompt_tokens', sc.max_prompt_tokens >= 1, 'must be >= 1'),
      ('filters.max_tokens', fc.max_tokens >= 0,
       'must be >= 0 (0: the sampling budget)'),
      ('data.source', config.data.source == 'synthetic' or
       config.data.source in datasets,
       f"must be 'synthetic' or a dataset in {datasets}"),
      ('rejection.batch_size', rc.batch_size >= rc.num_samples,
       f'must be >= rejection.num_samples={rc.num_samples} (rows per '
       'sampler call)'),
      ('sampling.max_new_tokens', config.sampling.max_new_tokens >= 2,
       'must be >= 2'),
      ('filters.max_per_prompt', fc.max_per_prompt >= 1, 'must be >= 1'),
      ('filters.min_language', 0.0 <= fc.min_language <= 1.0,
       'must be in [0, 1]'),
      ('filters.max_repeat', 0.0 <= fc.max_repeat <= 1.0, 'must be in [0, 1]'),
      ('filters.ngram', fc.ngram >= 1, 'must be >= 1'),
      ('model.hf_path', bool(config.model.hf_path or config.model.gguf_path),
       'is empty: rejection sampling needs a checkpoint to sample from '
       '(model.hf_path: an HF directory or an earlier stage\'s workdir; or '
       'model.gguf_path)'),
  ])
  if config.rewards.accuracy not in rewards_lib.REWARDS:
    raise errors.ConfigError(
        f'config.rewards.accuracy={config.rewards.accuracy!r} is not a known '
        f'reward; known: {rewards_lib.REWARDS.names()}')


# =================================================================== filters

_CODE_RE = re.compile(r'```')
_SPACE_RE = re.compile(r'\s+')


def repeated_fraction(text: str, n: int = 4) -> float:
  """Share of the word n-grams of `text` that repeat an earlier one."""
  words = text.split()
  grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
  if len(grams) < 2:
    return 0.0
  return 1.0 - len(set(grams)) / len(grams)


def filter_completions(rows: Sequence[Mapping[str, Any]],
                       fc: ml_collections.ConfigDict | Mapping[str, Any],
                       ) -> tuple[list[dict], dict[str, Any]]:
  """Applies the filters (module docstring) in order.

  Each row: prompt, completion (text, stop token removed), id (the prompt's),
  answer, task, correct (the accuracy reward), finished (ended with a stop
  token), num_tokens, and target_language (optional). Returns the kept rows
  and a report: {'sampled': n, 'prompts': p, 'kept': {filter: count left
  after it}, 'rejected': {filter: count it removed}, 'prompts_with_kept': q}.
  """
  fc = dict(fc)
  left = collections.OrderedDict()
  kept: list[dict] = []
  seen: set[tuple[str, str]] = set()
  per_prompt: collections.Counter = collections.Counter()
  counts = collections.Counter()
  for row in rows:
    text = row['completion']
    checks = (
        ('correct', float(row['correct']) >= 1.0),
        ('format', not fc['format'] or format_lib.strict_format_ok(text)),
        ('language', language_lib.language_consistency(
            format_lib.think_text(text),
            row.get('target_language') or fc['target_language'],
            empty_score=1.0) >= fc['min_language']),
        ('length', (bool(row['finished']) or not fc['drop_truncated']) and
         row['num_tokens'] <= (fc['max_tokens'] or row['num_tokens'])),
        ('code', row.get('task') == 'code' or not _CODE_RE.search(text)),
        ('repetition', repeated_fraction(text, fc['ngram']) <= fc['max_repeat']),
    )
    failed = next((name for name, ok in checks if not ok), None)
    if failed is None:
      key = (row['id'], _SPACE_RE.sub(' ', text).strip())
      if key in seen:
        failed = 'unique'
      elif per_prompt[row['id']] >= fc['max_per_prompt']:
        failed = 'per_prompt'
    if failed is not None:
      counts[failed] += 1
      continue
    seen.add(key)
    per_prompt[row['id']] += 1
    kept.append(dict(row))
  n = len(rows)
  for name in FILTERS:
    n -= counts[name]
    left[name] = n
  report = {
      'sampled': len(rows),
      'prompts': len({r['id'] for r in rows}),
      'kept': dict(left),
      'rejected': {name: counts[name] for name in FILTERS},
      'prompts_with_kept': len(per_prompt),
  }
  return kept, report


def report_table(report: Mapping[str, Any]) -> str:
  """The report as a console table: filter | removed | left | left %."""
  total = max(report['sampled'], 1)
  lines = [f'{"filter":<12} {"removed":>8} {"left":>8} {"left %":>7}',
           f'{"sampled":<12} {"":>8} {report["sampled"]:>8} {100.0:>6.1f}%']
  for name in FILTERS:
    left = report['kept'][name]
    lines.append(f'{name:<12} {report["rejected"][name]:>8} {left:>8} '
                 f'{100 * left / total:>6.1f}%')
  lines.append(f'{report["prompts_with_kept"]} of {report["prompts"]} prompts '
               'have at least one kept completion')
  return '\n'.join(lines)


# ================================================================== sampling


def _sample_chunk(config, sampler, params, tokenizer, chunk, seed):
  rc, sc = config.rejection, config.sampling
  ids = [prompt_ids(config.data.template, r['problem'], tokenizer) for r in chunk]
  out = sampler.generate(params, ids, max_new_tokens=sc.max_new_tokens,
                         n=rc.num_samples, temperature=sc.temperature,
                         top_p=sc.top_p, seed=seed)
  tokens = parallel.host_rows(out.tokens)
  lengths = parallel.host_rows(out.lengths)
  finish = parallel.host_rows(out.finish_reason)
  texts = tokenizer.decode_completions(tokens, lengths, finish == FINISH_STOP)
  examples = [r for r in chunk for _ in range(rc.num_samples)]
  correct = rewards_lib.REWARDS.get(config.rewards.accuracy)(texts, examples)
  rows = []
  for i, text in enumerate(texts):
    rec = examples[i]
    rows.append(dict(
        id=rec['id'], task=rec.get('task', ''), answer=rec.get('answer', ''),
        prompt=render_prompt(config.data.template, rec['problem'], tokenizer),
        completion=text, correct=float(correct[i]),
        finished=bool(finish[i] == FINISH_STOP), num_tokens=int(lengths[i]),
        target_language=rec.get('target_language', '')))
  return rows


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Samples, filters and writes the SFT data set; returns the report."""
  t_start = time.perf_counter()
  validate_config(config)
  if jax.process_count() > 1:
    raise errors.ConfigError('stage rejection_sampling runs in one process (it is '
                     'sampling only); start it without jax.distributed')
  say = print if jax.process_index() == 0 else (lambda *_: None)
  workdir, mesh, model_cfg, graphdef, params, tokenizer = (
      loading.open_sampling_run(config, workdir))
  records = problems.train_records(config)
  rc = config.rejection
  if rc.num_prompts:
    records = records[:rc.num_prompts]
  problems.check_prompt_lengths(records, config.data.template, tokenizer,
                                config.sampling.max_prompt_tokens)
  sampler = loading.make_sampler(graphdef, model_cfg, tokenizer, mesh,
                                 (config.sampling.max_prompt_tokens,))
  samples_path = workdir / SAMPLES_FILE
  rows = metrics_lib.read_jsonl(samples_path)  # a cut last line: sampled again
  per_chunk = max(1, rc.batch_size // rc.num_samples)
  done_chunks = len(rows) // (per_chunk * rc.num_samples)
  rows = rows[:done_chunks * per_chunk * rc.num_samples]  # whole chunks only
  if rows:
    say(f'stage rejection_sampling: resuming after {len(rows)} samples '
        f'({done_chunks} chunks)')
  if jax.process_index() == 0:  # rewrite without a cut last line
    run_records.write_text_atomic(
        samples_path, ''.join(json.dumps(r, ensure_ascii=False) + '\n'
                              for r in rows))
  say(f'stage rejection_sampling: {len(records)} prompts x {rc.num_samples} '
      f'samples from {config.model.hf_path or config.model.gguf_path}')
  starts = list(range(0, len(records), per_chunk))
  t_loop = time.perf_counter()
  for c, start in enumerate(starts):
    if c < done_chunks:
      continue
    chunk = records[start:start + per_chunk]
    new = _sample_chunk(config, sampler, params, tokenizer, chunk,
                        seed=config.seed + start)
    if jax.process_index() == 0:
      with samples_path.open('a', encoding='utf-8') as f:
        f.write(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in new))
    rows += new
    done = c + 1 - done_chunks
    say(console.progress_line(c + 1, len(starts), time.perf_counter() - t_loop,
                             done, {}, ()))

  kept, report = filter_completions(rows, config.filters)
  report['wall_time_s'] = time.perf_counter() - t_start
  report['source'] = config.model.hf_path or config.model.gguf_path
  if jax.process_index() == 0:
    sft_rows = [dict(prompt=r['prompt'], completion=r['completion'], id=r['id'],
                     answer=r['answer']) for r in kept]
    run_records.write_text_atomic(
        workdir / SFT_FILE, ''.join(json.dumps(r, ensure_ascii=False) + '\n'
                                    for r in sft_rows))
    run_records.write_text_atomic(workdir / REPORT_FILE,
                                  json.dumps(report, indent=1))
  say(report_table(report))
  say(f'wrote {len(kept)} examples to {workdir / SFT_FILE}')
  final = {'kept': report['kept']['per_prompt'], 'sampled': report['sampled'],
           'keep_rate': report['kept']['per_prompt'] / max(report['sampled'], 1),
           'pass@1': float(np.mean([r['correct'] for r in rows])) if rows else 0.0,
           'wall_time_s': report['wall_time_s']}
  run_records.mark_done(workdir, final)
  rewards_lib.shutdown_pool()
  return final

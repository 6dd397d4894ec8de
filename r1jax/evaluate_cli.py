r"""`python -m r1jax.evaluate`: a checkpoint's scores on the math and code sets.

    python -m r1jax.evaluate --checkpoint=runs/zero \
        --datasets=gsm8k,math500,aime24,amc23,synthetic
    python -m r1jax.evaluate --checkpoint=runs/zero --datasets=mbpp,humaneval

    # SmolLM2-135M-Instruct, 50 GSM8K problems, greedy, chat + \boxed{}
    # instruction: pass@1 0.000 (0/50), mean length 233 tokens; 5 min 54 s
    # on an idle 2-core CPU (20 min while other jobs shared it).
    python -m r1jax.evaluate --checkpoint=SmolLM2-135M-Instruct.Q4_1.gguf \
        --datasets=gsm8k --limit=50 --k=1 --temperature=0 --no-greedy \
        --template=chat_boxed --max_new_tokens=320 --batch_size=50 \
        --output=/tmp/smollm2.json

Per data set: pass@1 averaged over k samples (the R1 paper's temperature 0.6,
top-p 0.95), cons@k (majority vote, equivalent answers pooled), unbiased
pass@k, greedy accuracy, strict-format rate, language consistency of the
chain of thought and mean completion length (tokens). The results go to JSON
(--output; default: `eval.json` inside a checkpoint directory or workdir,
`<file>.eval.json` beside a GGUF file), with the same table in markdown next
to it (`.md`) and on stdout; a progress bar goes to stderr.

--checkpoint takes (`r1jax.checkpoint_source`)
  * a Hugging Face directory (config.json + safetensors + tokenizer),
  * a GGUF file (dequantized),
  * a training workdir: a finished stage's export (WORKDIR/hf), else the
    params of its latest orbax checkpoint, on the model its run_config.json
    describes, with the tokenizer the run used.

The math sets are the `r1jax.data.builders` test splits, read from --data_dir
(raw jsonl, default $R1JAX_DATA_DIR) and scored with the 'math' reward;
the code sets (MBPP's test split, task_id 11-510, and HumanEval) are scored
with the 'code' reward: each completion's fenced Python block runs against
the problem's tests in the sandbox, so pass@1 over k samples and the unbiased
pass@k are the code-generation figures (no cons@k for code);
`synthetic` is the synthetic tasks' test split (--synthetic_tasks,
--synthetic_problems), each task scored by its own reward. Sampling is the
one `r1jax.sampling.Sampler`; scoring is `r1jax.evaluate.evaluate_problems`.

--few_shot=K puts K worked examples from the data set's TRAIN split in front
of every problem, in the template's style (`r1jax.run.problems`: GSM8K
train for gsm8k, MATH train, which leaves MATH-500 out, for math500, each
synthetic task's train split for its problems); the same K for every
problem, drawn from --few_shot_seed, never a problem of the held-out split.
aime24, amc23 and the code sets have no train split with worked solutions
and are refused. 0 (the default) is the zero-shot prompt.
"""

import argparse
import dataclasses
import json
import pathlib
import sys
import time
from typing import Any, Callable, Sequence, TextIO

import jax
import numpy as np

from r1jax import checkpoint_source
from r1jax import errors
from r1jax import evaluate
from r1jax import parallel
from r1jax.data import synthetic
from r1jax.data import templates
from r1jax.errors import EvalError
from r1jax.run import console
from r1jax.run import loading
from r1jax.run import problems

MATH_SETS = ('gsm8k', 'math500', 'aime24', 'amc23')  # test splits
CODE_SETS = ('mbpp', 'humaneval')  # test splits; records of task 'code'
KNOWN_DATASETS = MATH_SETS + CODE_SETS + ('synthetic',)
SYNTHETIC_SEED = 1234  # the held-out seed of the experiment configs
_DTYPES = ('float32', 'bfloat16', 'float16')


# ===================================================================== data


def check_datasets(names: Sequence[str]) -> list[str]:
  """`names` without repeats; EvalError naming an unknown one."""
  unknown = [n for n in names if n not in KNOWN_DATASETS]
  if unknown or not names:
    raise EvalError(f'--datasets: unknown data set '
                    f'{", ".join(unknown) or "(none given)"}; known: '
                    f'{", ".join(KNOWN_DATASETS)}')
  return list(dict.fromkeys(names))


# `synthetic`'s tasks unless --synthetic_tasks names others: the reasoning
# tasks with a final answer ('code', the synthetic program task, on request).
DEFAULT_SYNTHETIC_TASKS = ('arithmetic', 'countdown')


def dataset_records(name: str, *, limit: int = 0, data_dir: str = '',
                    tfds_dir: str = '', synthetic_tasks: Sequence[str] = (),
                    synthetic_problems: int = 200, few_shot: int = 0,
                    few_shot_seed: int = 0) -> list[dict]:
  """The first `limit` (0: all) test problems of data set `name`; with
  `few_shot` = K, each carries K worked examples from its train split
  (`shots`), none of them a problem of the test split."""
  if name == 'synthetic':
    tasks = list(synthetic_tasks) or list(DEFAULT_SYNTHETIC_TASKS)
    per_task = -(-synthetic_problems // len(tasks))
    by_task = [synthetic.generate(t, per_task, seed=SYNTHETIC_SEED,
                                  split='test') for t in tasks]
    # Interleaved, so that --limit keeps a mix of the tasks.
    records = [r for group in zip(*by_task) for r in group]
    records = records[:synthetic_problems]
  else:
    check_few_shot(name, few_shot)
    from r1jax.data import builders  # pylint: disable=g-import-not-at-top
    try:
      records = builders.load_dataset(name, 'test', data_dir=tfds_dir or None,
                                      local_dir=data_dir or None)
    except (FileNotFoundError, RuntimeError) as e:  # no raw file, offline
      raise EvalError(f'data set {name}: {e}') from e
  chosen = list(records[:limit] if limit else records)
  if not few_shot:
    return chosen
  # Shots are never a problem of the test split, evaluated (--limit) or not.
  held_out = [r['problem'] for r in records]
  try:
    if name == 'synthetic':
      shots = {t: problems.synthetic_shots(t, few_shot, few_shot_seed,
                                           held_out, key='--few_shot')
               for t in tasks}
      return [{**r, 'shots': shots[r['task']]} for r in chosen]
    train_name, train_split = problems.FEW_SHOT_SOURCES[name]
    try:
      train = builders.load_dataset(train_name, train_split,
                                    data_dir=tfds_dir or None,
                                    local_dir=data_dir or None)
    except (FileNotFoundError, RuntimeError) as e:
      raise EvalError(f'data set {name}: its few-shot examples '
                      f'({train_name} {train_split}): {e}') from e
    shots = problems.choose_shots(train, few_shot, few_shot_seed, held_out,
                                  what=f'{train_name} {train_split}',
                                  key='--few_shot')
  except errors.ConfigError as e:  # too few shots: one line, --few_shot
    if isinstance(e, EvalError):
      raise
    raise EvalError(f'data set {name}: {e}') from None
  return [{**r, 'shots': shots} for r in chosen]


def check_few_shot(name: str, few_shot: int) -> None:
  """EvalError naming --few_shot when data set `name` has no train split
  with worked solutions to draw K > 0 shots from."""
  if few_shot and name != 'synthetic' and name not in problems.FEW_SHOT_SOURCES:
    raise EvalError(
        f'--few_shot={few_shot}: data set {name} has no train split with '
        'worked solutions to draw shots from (few-shot takes synthetic, '
        f'{", ".join(problems.FEW_SHOT_SOURCES)}); use --few_shot=0 for it')


# =============================================================== evaluation


class Progress:
  """'gsm8k: [####......] 120/500 24% ETA 3m10s | pass@1 0.41' on stderr.

  On a terminal the line is redrawn in place; otherwise a line is written
  every 10% (and at the end), so logs stay short.
  """

  def __init__(self, total: int, stream: TextIO | None = None):
    self.total, self.done, self.stream = total, 0, stream or sys.stderr
    self.t0 = time.perf_counter()
    self._tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
    self._tenth = 0

  def advance(self, n: int, label: str, metrics: dict[str, Any]) -> None:
    self.done += n
    line = label + ': ' + console.progress_line(
        self.done, self.total, time.perf_counter() - self.t0, self.done,
        metrics, [('pass@1', 'pass@1')])
    tenth = 10 * self.done // max(self.total, 1)
    if self._tty:
      end = '\n' if self.done >= self.total else ''
      self.stream.write('\r\033[K' + line + end)
    elif tenth > self._tenth or self.done >= self.total:
      self.stream.write(line + '\n')
    self._tenth = tenth
    self.stream.flush()


@dataclasses.dataclass(frozen=True)
class Settings:
  template: str = 'r1_zero'
  num_samples: int = 16        # k
  temperature: float = 0.6
  top_p: float = 0.95
  max_new_tokens: int = 1024
  batch_size: int = 64         # completions per sampler call
  greedy: bool = True          # also one temperature-0 pass
  seed: int = 0
  few_shot: int = 0            # worked examples before each problem
  few_shot_seed: int = 0       # which ones (from the train split)


def evaluate_dataset(sampler, params, tokenizer, records: Sequence[dict],
                     s: Settings, *, label: str, progress: Progress
                     ) -> dict[str, Any]:
  """Scores of one data set (`evaluate.evaluate_model`): a mix of synthetic
  tasks is scored task by task, each with its own reward, and also reported
  per task ('by_task')."""
  k = s.num_samples
  stats = evaluate.evaluate_model(
      sampler, params, tokenizer, records, template=s.template,
      num_samples=k, temperature=s.temperature, top_p=s.top_p,
      max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, seed=s.seed,
      ks=(k,) if k > 1 else (), greedy=s.greedy,
      on_batch=lambda n, p: progress.advance(n, label, {'pass@1': p}))
  out = {key: v for key, v in stats.items() if '/' not in key}
  if len(out['by_task']) == 1:
    del out['by_task']
  out['samples'] = out['samples'][:4]
  return out


def evaluate_checkpoint(checkpoint: str, datasets: Sequence[str],
                        settings: Settings = Settings(), *, limit: int = 0,
                        data_dir: str = '', tfds_dir: str = '',
                        synthetic_tasks: Sequence[str] = (),
                        synthetic_problems: int = 200, dtype: str = '',
                        log: Callable[[str], None] = print,
                        progress_stream: TextIO | None = None
                        ) -> dict[str, Any]:
  """The report of `checkpoint` on `datasets` (see the module docstring)."""
  t0 = time.perf_counter()
  if jax.process_count() > 1:
    raise EvalError('the evaluation command runs in a single process')
  datasets = check_datasets(datasets)
  known = templates.TEMPLATES.names()
  if settings.template not in known:
    raise EvalError(f'--template={settings.template!r} is not a prompt '
                    f'template; known: {", ".join(known)}')
  if settings.few_shot < 0:
    raise EvalError(f'--few_shot={settings.few_shot} must be >= 0')
  if settings.few_shot and not templates.get_template(
      settings.template).takes_shots:
    raise EvalError(f'--few_shot={settings.few_shot}: template '
                    f'{settings.template!r} takes no worked examples')
  for name in datasets:  # before any data set is read
    check_few_shot(name, settings.few_shot)
  records = {name: dataset_records(
      name, limit=limit, data_dir=data_dir, tfds_dir=tfds_dir,
      synthetic_tasks=synthetic_tasks, synthetic_problems=synthetic_problems,
      few_shot=settings.few_shot, few_shot_seed=settings.few_shot_seed)
             for name in datasets}
  mesh = parallel.make_mesh({'data': -1})
  model = checkpoint_source.load(checkpoint, mesh, dtype)
  buckets = loading.prompt_buckets(model.cfg.max_position_embeddings)
  for name, recs in records.items():  # a clear error, not the sampler's
    try:
      problems.check_prompt_lengths(
          recs, settings.template, model.tokenizer, max(buckets),
          f'{name} prompt', limit=(
              "the checkpoint's max_position_embeddings"
              if max(buckets) == model.cfg.max_position_embeddings
              else 'the largest prompt bucket'), shots_key='--few_shot',
          fix=('use a smaller --few_shot or another --template'
               if settings.few_shot else 'use another --template'))
    except errors.ConfigError as e:
      raise EvalError(str(e)) from None
  log(f'{model.kind} checkpoint {model.source}: {model.cfg.num_layers} layers,'
      f' vocab {model.tokenizer.vocab_size}; ' + ', '.join(
          f'{n} {len(r)} problems' for n, r in records.items()))
  sampler = loading.make_sampler(
      model.graphdef, model.cfg, model.tokenizer, mesh, buckets)
  passes = 1 + (settings.greedy and settings.temperature > 0)
  progress = Progress(passes * sum(len(r) for r in records.values()),
                      progress_stream)
  results = {}
  for name, recs in records.items():
    if recs:
      results[name] = evaluate_dataset(sampler, model.params, model.tokenizer,
                                       recs, settings, label=name,
                                       progress=progress)
  return {
      'checkpoint': str(checkpoint), 'kind': model.kind,
      'loaded_from': model.source, 'step': model.step,
      'settings': {**dataclasses.asdict(settings), 'limit': limit,
                   'dtype': np.dtype(model.cfg.dtype).name},
      'results': results,
      'wall_s': time.perf_counter() - t0,
  }


# ================================================================== reports

_COLUMNS = (('pass@1', 'pass@1'), ('cons@{k}', 'cons@{k}'),
            ('pass@{k}', 'pass@{k}'), ('greedy', 'greedy_accuracy'),
            ('format', 'format_rate'), ('language', 'language_consistency'),
            ('length', 'mean_length'))


def markdown_table(report: dict[str, Any]) -> str:
  """The report's metrics as a markdown table, one row per data set (and
  per synthetic task); a column no data set has (cons@1, greedy when it
  was not run) is left out."""
  s = report['settings']
  k = s['num_samples']
  cols = dict((key.format(k=k), label.format(k=k)) for label, key in _COLUMNS)
  cols = [(label, key) for key, label in cols.items()
          if any(key in r for r in report['results'].values())]
  lines = [
      f'{report["kind"]} checkpoint `{report["checkpoint"]}`: template '
      f'`{s["template"]}`, k={k}, temperature {s["temperature"]}, top-p '
      f'{s["top_p"]}, max_new_tokens {s["max_new_tokens"]}'
      + (f', {s["few_shot"]}-shot (seed {s["few_shot_seed"]})'
         if s.get('few_shot') else '')
      + (f', first {s["limit"]} problems' if s['limit'] else ''), '',
      '| data set | problems | ' + ' | '.join(c for c, _ in cols) + ' |',
      '|---|---:|' + '---:|' * len(cols)]

  def row(name, stats):
    cells = []
    for _, key in cols:
      v = stats.get(key)
      cells.append('-' if v is None else
                   f'{v:.1f}' if key == 'mean_length' else f'{v:.3f}')
    return f'| {name} | {stats["num_problems"]} | ' + ' | '.join(cells) + ' |'

  for name, stats in report['results'].items():
    lines.append(row(name, stats))
    for task, t in stats.get('by_task', {}).items():
      lines.append(row(f'{name}/{task}', t))
  return '\n'.join(lines) + '\n'


def default_output(checkpoint: str | pathlib.Path) -> pathlib.Path:
  """eval.json inside a directory; <name>.eval.json beside a file."""
  path = pathlib.Path(checkpoint)
  if path.is_dir():
    return path / 'eval.json'
  return path.with_name(path.stem + '.eval.json')


def write_report(report: dict[str, Any], output: pathlib.Path) -> pathlib.Path:
  """Writes OUTPUT (json) and the markdown table beside it; the .md path."""
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(json.dumps(report, indent=1, default=_jsonable) + '\n',
                    encoding='utf-8')
  md = output.with_suffix('.md')
  md.write_text(markdown_table(report), encoding='utf-8')
  return md


def _jsonable(x):
  if isinstance(x, np.generic):
    return x.item()
  raise TypeError(f'{type(x).__name__} is not JSON serializable')


# ====================================================================== CLI


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='python -m r1jax.evaluate',
      description='pass@1 over k samples, cons@k, pass@k, greedy accuracy, '
      'format rate, language consistency and length of a checkpoint.')
  p.add_argument('--checkpoint', required=True,
                 help='HF directory, .gguf file, or a training workdir')
  p.add_argument('--datasets', default='gsm8k,math500,aime24,amc23,synthetic',
                 help=f'comma-separated, of: {", ".join(KNOWN_DATASETS)}')
  p.add_argument('--num_samples', '--k', type=int, default=Settings.num_samples,
                 help='k: samples per problem (paper: 16; 64 for cons@64)')
  p.add_argument('--temperature', type=float, default=Settings.temperature)
  p.add_argument('--top_p', type=float, default=Settings.top_p)
  p.add_argument('--max_new_tokens', type=int, default=Settings.max_new_tokens)
  p.add_argument('--template', default=Settings.template,
                 help="prompt template (r1_zero; 'chat' or 'chat_boxed' for "
                 'instruct models)')
  p.add_argument('--batch_size', type=int, default=Settings.batch_size,
                 help='completions per sampler call')
  p.add_argument('--greedy', action=argparse.BooleanOptionalAction,
                 default=True, help='also a temperature-0 pass (greedy '
                 'accuracy)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--few_shot', type=int, default=Settings.few_shot,
                 help='K worked examples from the train split before each '
                 'problem, in the template\'s style (0: zero-shot)')
  p.add_argument('--few_shot_seed', type=int, default=Settings.few_shot_seed,
                 help='which K examples (the same for every problem)')
  p.add_argument('--limit', type=int, default=0,
                 help='only the first N problems of each data set (0: all)')
  p.add_argument('--data_dir', default='',
                 help='raw jsonl files (default $R1JAX_DATA_DIR)')
  p.add_argument('--tfds_dir', default='',
                 help='prepared data sets (default $R1JAX_TFDS_DIR or '
                 '~/.cache/r1jax/tfds)')
  p.add_argument('--synthetic_tasks', default='',
                 help='comma-separated synthetic tasks (default: '
                 f'{",".join(DEFAULT_SYNTHETIC_TASKS)}; known: '
                 f'{", ".join(synthetic.TASKS.names())})')
  p.add_argument('--synthetic_problems', type=int, default=200)
  p.add_argument('--dtype', default='', choices=('',) + _DTYPES,
                 help='compute/param dtype (default float32, or a workdir '
                 "run's own)")
  p.add_argument('--output', default='',
                 help='results JSON (markdown beside it, .md); default: '
                 'eval.json in the checkpoint directory, <file>.eval.json '
                 'beside a GGUF file')
  return p


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
  """Runs the command; 0 on success, 2 (after one error line) on bad input."""
  stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
  parser = _parser()
  args = parser.parse_args(argv)
  checks = [(args.num_samples >= 1, '--num_samples/--k must be >= 1'),
            (args.max_new_tokens >= 1, '--max_new_tokens must be >= 1'),
            (args.batch_size >= 1, '--batch_size must be >= 1'),
            (args.limit >= 0, '--limit must be >= 0'),
            (args.temperature >= 0, '--temperature must be >= 0'),
            (args.few_shot >= 0, '--few_shot must be >= 0'),
            (0 < args.top_p <= 1, '--top_p must be in (0, 1]'),
            (args.synthetic_problems >= 1, '--synthetic_problems must be >= 1')]
  for ok, why in checks:
    if not ok:
      parser.error(why)
  settings = Settings(
      template=args.template, num_samples=args.num_samples,
      temperature=args.temperature, top_p=args.top_p,
      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
      greedy=args.greedy, seed=args.seed, few_shot=args.few_shot,
      few_shot_seed=args.few_shot_seed)
  split = lambda s: [x.strip() for x in s.split(',') if x.strip()]
  try:
    datasets = check_datasets(split(args.datasets))
    checkpoint_source.checkpoint_kind(pathlib.Path(args.checkpoint))
    if 'synthetic' in datasets and args.synthetic_tasks:
      bad = [t for t in split(args.synthetic_tasks) if t not in synthetic.TASKS]
      if bad:
        raise EvalError(f'--synthetic_tasks: unknown task {", ".join(bad)}; '
                        f'known: {", ".join(synthetic.TASKS.names())}')
    report = evaluate_checkpoint(
        args.checkpoint, datasets, settings, limit=args.limit,
        data_dir=args.data_dir, tfds_dir=args.tfds_dir,
        synthetic_tasks=split(args.synthetic_tasks),
        synthetic_problems=args.synthetic_problems, dtype=args.dtype,
        log=lambda s: print(s, file=stderr), progress_stream=stderr)
  except checkpoint_source.CheckpointError as e:
    if errors.show_traceback():  # R1JAX_TRACEBACK=1
      raise
    print(f'{parser.prog}: error: --checkpoint: {e}', file=stderr)
    return 2
  except EvalError as e:
    if errors.show_traceback():
      raise
    print(f'{parser.prog}: error: {e}', file=stderr)
    return 2
  output = pathlib.Path(args.output) if args.output else default_output(
      args.checkpoint)
  md = write_report(report, output)
  stdout.write(markdown_table(report))
  print(f'wrote {output} and {md} ({report["wall_s"]:.0f} s)', file=stderr)
  return 0

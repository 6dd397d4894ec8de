"""The problems of a run: the RL / rejection prompt pool and the held-out set.

Named data sets come from `r1jax.data.builders`, imported where they are read:
it imports tensorflow_datasets (about a second), which a synthetic run never
needs.

Few-shot evaluation (`eval.few_shot` = k > 0): each held-out record gets
`shots`, k worked examples ({id, problem, reasoning, answer}) that
`templates.record_prompt_ids` puts in front of its problem. They are TRAIN
problems only: the synthetic tasks' train split (the held-out problems' own
difficulty and languages), or the train records of `FEW_SHOT_SOURCES` (GSM8K
train for gsm8k; MATH train, which excludes MATH-500, for math and math500).
The worked answer is a synthetic problem's steps ('First, 9 - 2 = 7. Then,
...'), or the reference solution cleaned as the cold start cleans it
(r1jax/data/cold_start.py). The shots are a pure function of
`eval.few_shot_seed` and the same for every problem of one evaluation (of
one synthetic task); a candidate whose problem text equals a held-out
problem's (whitespace aside) is skipped, as is one with no worked solution.
"""

import random
from typing import Iterable, Mapping, Sequence

import ml_collections

from r1jax import errors
from r1jax.data import cold_start
from r1jax.data import synthetic
from r1jax.data import templates

# Where a named held-out set's worked examples come from: (data set, split)
# of train records with reference solutions. Sets not here (aime24, amc23,
# and the code sets, whose solutions are programs without reasoning) take no
# shots.
FEW_SHOT_SOURCES = {'gsm8k': ('gsm8k', 'train'), 'math': ('math', 'train'),
                    'math500': ('math', 'train')}
FEW_SHOT_KEY = 'config.eval.few_shot'


def _synthetic_pool(k: int) -> int:
  """Synthetic candidates drawn per task: more than k, for skipped ones."""
  return 4 * k + 16


def synthetic_train_records(dc: ml_collections.ConfigDict, seed: int
                            ) -> list[dict]:
  """data.num_train synthetic train problems over data.tasks (with their
  data.difficulty), asked in data.languages when it is set."""
  records = []
  per_task = max(1, dc.num_train // len(dc.tasks))
  for task in dc.tasks:
    records += synthetic.generate(task, per_task, seed=seed, split='train',
                                  **dc.difficulty.to_dict().get(task, {}))
  if dc.get('languages'):
    records = synthetic.localize(records, dc.languages.to_dict(), seed)
  return records


def eval_records(config, split_seed_offset: int = 0) -> list[dict]:
  """Held-out problems: synthetic test splits, or a named dataset; with
  eval.few_shot = k > 0, each carries its k worked examples (`shots`)."""
  ec = config.eval
  k = check_few_shot(ec)
  seed = ec.get('few_shot_seed', 0)
  if ec.dataset in ('', 'synthetic'):
    tasks = list(ec.tasks)
    per_task = max(1, ec.num_problems // len(tasks))
    records = []
    corpus_difficulty = {}
    if 'corpus' in config.data:
      corpus_difficulty = config.data.corpus.difficulty.to_dict()
    elif 'difficulty' in config.data:
      corpus_difficulty = config.data.difficulty.to_dict()
    knobs = {task: ec.difficulty.to_dict().get(
        task, corpus_difficulty.get(task, {})) for task in tasks}
    for task in tasks:
      records += synthetic.generate(task, per_task, seed=ec.seed + split_seed_offset,
                                    split=ec.split, **knobs[task])
    languages = ec.get('languages') or config.data.get('languages')
    if languages:  # a mixed-language test set
      records = synthetic.localize(records, languages.to_dict(), ec.seed)
    if k:
      held_out = [r['problem'] for r in records]
      shots = {task: synthetic_shots(
          task, k, seed, held_out, knobs[task],
          languages.to_dict() if languages else None) for task in tasks}
      records = [{**r, 'shots': shots[r['task']]} for r in records]
    return records
  from r1jax.data import builders  # pylint: disable=g-import-not-at-top
  local_dir = config.data.get('local_dir', '') or None
  records = _load(builders, 'eval.dataset', ec.dataset, 'eval.split', ec.split,
                  local_dir)
  chosen = [records[i] for i in range(min(ec.num_problems, len(records)))]
  if not k:
    return chosen
  # Every problem of the held-out split, not only those evaluated.
  held_out = [r['problem'] for r in records]
  train_name, train_split = FEW_SHOT_SOURCES[ec.dataset]
  train = builders.load_dataset(train_name, train_split, local_dir=local_dir)
  shots = choose_shots(train, k, seed, held_out,
                       what=f'{train_name} {train_split}')
  return [{**r, 'shots': shots} for r in chosen]


def check_few_shot(ec: ml_collections.ConfigDict, key: str = FEW_SHOT_KEY,
                   dataset_key: str = 'config.eval.dataset') -> int:
  """eval.few_shot (0 when the section has none), checked before any data
  is read: a whole number >= 0, a held-out set with a train split of
  worked solutions, a template that takes shots. One line naming the key."""
  k = ec.get('few_shot', 0)
  if isinstance(k, bool) or not isinstance(k, int) or k < 0:
    raise errors.ConfigError(f'{key}={k!r} must be a whole number >= 0 '
                             '(0: zero-shot prompts)')
  if not k:
    return 0
  dataset = ec.get('dataset', '') or 'synthetic'
  if dataset != 'synthetic' and dataset not in FEW_SHOT_SOURCES:
    raise errors.ConfigError(
        f'{key}={k}: {dataset_key}={dataset!r} has no train split with '
        'worked solutions to draw shots from (few-shot takes synthetic, '
        f'{", ".join(FEW_SHOT_SOURCES)}); set {key}=0')
  template = ec.get('template', 'r1_zero')
  if template in templates.TEMPLATES and not templates.get_template(
      template).takes_shots:
    raise errors.ConfigError(f'{key}={k}: template {template!r} has no turn '
                             'to repeat for worked examples; set it to 0')
  return k


def _same_text(problem: str) -> str:
  return ' '.join(str(problem).split())


def worked_example(record: Mapping) -> dict | None:
  """A train record as a worked example {id, problem, reasoning, answer},
  or None when it has no worked solution: a synthetic record's steps with
  the cold start's connectives in its language ('First, 9 - 2 = 7. Then,
  7 + 5 = 12.'), else its reference `solution` cleaned as the cold start
  cleans its `source` (GSM8K without calculator notes and '#### N')."""
  answer = str(record.get('answer') or '').strip()
  steps = record.get('solution_steps')
  if steps:
    first, then = cold_start.CONNECTIVES.get(
        record.get('target_language') or 'en', cold_start.CONNECTIVES['en'])[:2]
    reasoning = ' '.join(f'{first if j == 0 else then} {step}.'
                         for j, step in enumerate(steps))
  else:
    clean = cold_start.REASONING.get(record.get('source', ''))
    solution = str(record.get('solution') or '')
    reasoning = clean(solution) if clean and solution.strip() else ''
  if not reasoning or not answer or not str(record.get('problem', '')).strip():
    return None
  return {'id': str(record.get('id', '')), 'problem': record['problem'],
          'reasoning': reasoning, 'answer': answer}


def choose_shots(candidates: Sequence[Mapping], k: int, seed: int,
                 held_out: Iterable[str], *, what: str,
                 key: str = FEW_SHOT_KEY) -> list[dict]:
  """k worked examples from the train records `candidates`, in an order
  drawn from `seed`: a candidate whose problem is a held-out one (in
  `held_out`, whitespace aside), repeats an earlier shot or has no worked
  solution is skipped. ConfigError naming `key` when fewer than k are left."""
  skip = {_same_text(p) for p in held_out}
  order = list(range(len(candidates)))
  random.Random(synthetic.stable_hash('few-shot', seed, what)).shuffle(order)
  shots = []
  for i in order:
    record = candidates[i]
    text = _same_text(record.get('problem', ''))
    if text in skip:
      continue
    shot = worked_example(record)
    if shot is None:
      continue
    skip.add(text)
    shots.append(shot)
    if len(shots) == k:
      return shots
  raise errors.ConfigError(
      f'{key}={k}: only {len(shots)} of the {len(candidates)} {what} records '
      'have a worked solution and are not held-out problems; use fewer shots')


def synthetic_shots(task: str, k: int, seed: int, held_out: Iterable[str],
                    knobs: Mapping | None = None,
                    languages: Mapping[str, float] | None = None, *,
                    key: str = FEW_SHOT_KEY) -> list[dict]:
  """k worked examples of synthetic `task` from its train split (split by
  problem hash, so never a test problem), drawn with the held-out problems'
  difficulty `knobs`, asked in `languages` when given."""
  pool = synthetic.generate(task, _synthetic_pool(k), seed=seed,
                            split='train', **dict(knobs or {}))
  if languages:
    pool = synthetic.localize(pool, dict(languages), seed)
  return choose_shots(pool, k, seed, held_out, what=f'synthetic {task} train',
                      key=key)


def dataset_names() -> list[str]:
  """The named data sets a config may use (data.source, eval.dataset)."""
  from r1jax.data import builders  # pylint: disable=g-import-not-at-top
  return builders.DATASETS.names()


def train_records(config) -> list[dict]:
  """The RL / rejection-sampling prompt pool: synthetic train splits
  (data.source='synthetic'), or a named data set's data.split."""
  dc = config.data
  if dc.source == 'synthetic':
    return synthetic_train_records(dc, config.seed)
  from r1jax.data import builders  # pylint: disable=g-import-not-at-top
  recs = _load(builders, 'data.source', dc.source, 'data.split', dc.split,
               dc.local_dir or None)
  n = len(recs) if not dc.num_train else min(dc.num_train, len(recs))
  return [recs[i] for i in range(n)]


def _load(builders, name_key: str, name: str, split_key: str, split: str,
          local_dir):
  """builders.load_dataset, its unknown name or split as one line naming
  the config keys."""
  try:
    return builders.load_dataset(name, split, local_dir=local_dir)
  except errors.UnknownNameError as e:
    raise errors.UnknownNameError(
        f'config.{name_key}={name!r}, config.{split_key}={split!r}: {e}'
    ) from None


def check_prompt_lengths(records, template: str, tokenizer, width: int,
                         where: str = 'prompt', *,
                         limit: str = 'config.sampling.max_prompt_tokens',
                         shots_key: str = FEW_SHOT_KEY,
                         fix: str = '') -> None:
  """A prompt longer than sampling.max_prompt_tokens (`width`; `limit`
  names it) fails before any sampling starts, not in the middle of the run.
  Prompts are measured as they are built, worked examples (`shots`) and all;
  the error says what to change (`fix`: by default, raise the limit)."""
  if not records:
    return
  longest = max(len(templates.record_prompt_ids(template, r, tokenizer))
                for r in records)
  if longest > width:
    k = max(len(r.get('shots') or ()) for r in records)
    shots = f' and {k} shots, {shots_key}' if k else ''
    raise errors.ConfigError(
        f'{limit}={width} is shorter than the '
        f'longest {where} ({longest} tokens with template {template!r}'
        f'{shots}); ' + (fix or 'raise it, or use fewer / shorter problems'
                          + (' or fewer shots' if k else '')))

"""The problems of a run: the RL / rejection prompt pool and the held-out set.

Named data sets come from `r1jax.data.builders`, imported where they are read:
it imports tensorflow_datasets (about a second), which a synthetic run never
needs.
"""

import ml_collections

from r1jax import errors
from r1jax.data import synthetic
from r1jax.data import templates


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
  """Held-out problems: synthetic test splits, or a named dataset."""
  ec = config.eval
  if ec.dataset in ('', 'synthetic'):
    tasks = list(ec.tasks)
    per_task = max(1, ec.num_problems // len(tasks))
    records = []
    corpus_difficulty = {}
    if 'corpus' in config.data:
      corpus_difficulty = config.data.corpus.difficulty.to_dict()
    elif 'difficulty' in config.data:
      corpus_difficulty = config.data.difficulty.to_dict()
    for task in tasks:
      knobs = ec.difficulty.to_dict().get(task, corpus_difficulty.get(task, {}))
      records += synthetic.generate(task, per_task, seed=ec.seed + split_seed_offset,
                                    split=ec.split, **knobs)
    languages = ec.get('languages') or config.data.get('languages')
    if languages:  # a mixed-language test set
      records = synthetic.localize(records, languages.to_dict(), ec.seed)
    return records
  from r1jax.data import builders  # pylint: disable=g-import-not-at-top
  local_dir = config.data.get('local_dir', '') or None
  records = _load(builders, 'eval.dataset', ec.dataset, 'eval.split', ec.split,
                  local_dir)
  return [records[i] for i in range(min(ec.num_problems, len(records)))]


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
                         where: str = 'prompt') -> None:
  """A prompt longer than sampling.max_prompt_tokens (`width`) fails before
  any sampling starts, not in the middle of the run."""
  if not records:
    return
  longest = max(len(templates.prompt_ids(template, r['problem'], tokenizer))
                for r in records)
  if longest > width:
    raise errors.ConfigError(
        f'config.sampling.max_prompt_tokens={width} is shorter than the '
        f'longest {where} ({longest} tokens with template {template!r}); '
        'raise it, or use fewer / shorter problems')

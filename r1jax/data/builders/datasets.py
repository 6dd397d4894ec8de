"""TFDS builders (array_record, no TensorFlow) and `load_dataset`.

The datasets are written in the array_record format and read back through
`as_data_source()` (random access). TensorFlow is never imported: the tfrecord
path of tensorflow-datasets needs TensorFlow, array_record does not.
"""

import dataclasses
import os
import pathlib
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from r1jax.data.builders.raw import CODE_FIELDS
from r1jax.data.builders.raw import competition_records
from r1jax.data.builders.raw import DATA_DIR_ENV
from r1jax.data.builders.raw import FIELDS
from r1jax.data.builders.raw import gsm8k_records
from r1jax.data.builders.raw import humaneval_records
from r1jax.data.builders.raw import math_records
from r1jax.data.builders.raw import MBPP_SPLITS
from r1jax.data.builders.raw import mbpp_records
from r1jax.data.builders.raw import RAW_FILES
from r1jax.data.builders.raw import read_jsonl
from r1jax.data.builders.raw import require
from r1jax.errors import MissingFileError
from r1jax.errors import UnknownNameError
from r1jax.registry import Registry

TFDS_DIR_ENV = 'R1JAX_TFDS_DIR'  # prepared array_record datasets
DEFAULT_TFDS_DIR = '~/.cache/r1jax/tfds'


class _MathTextBuilder(tfds.core.GeneratorBasedBuilder,
                       skip_registration=True):
  """Shared parts: text features, raw-file lookup, array_record by default."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  DESCRIPTION = ''
  HOMEPAGE = ''
  RAW: tuple[str, ...] = ()  # keys of RAW_FILES this dataset reads
  # No checksums file ships with r1jax. Setting this also sidesteps tfds
  # 4.9.10 resolving the builder's source path through the
  # `importlib_resources` backport, which is not installed on Python >= 3.9.
  code_path = None

  def __init__(self, *, local_dir: str | os.PathLike | None = None,
               file_format: str | None = 'array_record', **kwargs):
    self._local_dir = local_dir or os.environ.get(DATA_DIR_ENV) or None
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION, homepage=self.HOMEPAGE,
        features=tfds.features.FeaturesDict(
            {k: tfds.features.Text() for k in FIELDS}),
        # Records keep the order of the source files, so index i is line i.
        disable_shuffling=True)

  def _raw_paths(self, dl_manager) -> dict[str, pathlib.Path]:
    if self._local_dir:
      paths = {k: pathlib.Path(self._local_dir) / RAW_FILES[k][0]
               for k in self.RAW}
      for p in paths.values():
        if not p.is_file():
          raise MissingFileError(
              f'{p} not found in the local data dir {self._local_dir} '
              f'(from the local_dir argument or ${DATA_DIR_ENV}).')
      return paths
    urls = {k: RAW_FILES[k][1] for k in self.RAW}
    try:
      downloaded = dl_manager.download(urls)
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise RuntimeError(
          f'Could not download {sorted(urls.values())} ({e!r}). Offline, '
          f'point local_dir or ${DATA_DIR_ENV} at a copy of the raw files '
          f'({sorted(RAW_FILES[k][0] for k in self.RAW)}).') from e
    return {k: pathlib.Path(p) for k, p in downloaded.items()}

  def _split_generators(self, dl_manager):
    return self._splits(self._raw_paths(dl_manager))

  def _splits(self, paths: Mapping[str, pathlib.Path]) -> dict[str, Iterator]:
    raise NotImplementedError

  def _generate_examples(self, records):  # pylint: disable=arguments-differ
    yield from records


class R1jaxGsm8k(_MathTextBuilder):
  """GSM8K (Cobbe et al., 2021): 7473 train / 1319 test word problems."""

  name = 'r1jax_gsm8k'
  DESCRIPTION = 'GSM8K grade-school math; answer = the "#### N" number.'
  HOMEPAGE = 'https://github.com/openai/grade-school-math'
  RAW = ('gsm8k_train', 'gsm8k_test')

  def _splits(self, paths):
    return {split: self._generate_examples(
        gsm8k_records(paths[f'gsm8k_{split}'], split))
            for split in ('train', 'test')}


class R1jaxMath(_MathTextBuilder):
  """MATH: train = the 4500 test problems outside MATH-500; test = MATH-500."""

  name = 'r1jax_math'
  DESCRIPTION = ('MATH (Hendrycks et al., 2021). train: the 4500 problems of '
                 'the MATH test split not in MATH-500 (matched on problem '
                 'text); test: MATH-500.')
  HOMEPAGE = 'https://github.com/hendrycks/math'
  RAW = ('math_test5000', 'math500')

  def _splits(self, paths):
    held_out = frozenset(
        require(row, 'problem', paths['math500'], lineno).strip()
        for lineno, row in read_jsonl(paths['math500']))
    return {
        'train': self._generate_examples(
            math_records(paths['math_test5000'], 'math', held_out)),
        'test': self._generate_examples(
            math_records(paths['math500'], 'math500')),
    }


class _CompetitionBuilder(_MathTextBuilder):
  """A competition's problems with numeric answers: one test split."""

  def _splits(self, paths):
    raw = self.RAW[0]
    return {'test': self._generate_examples(
        competition_records(paths[raw], raw))}


class R1jaxAime24(_CompetitionBuilder):
  """AIME 2024 I and II: 30 problems with integer answers 0..999."""

  name = 'r1jax_aime24'
  DESCRIPTION = 'AIME 2024 (via QwenLM/Qwen2.5-Math evaluation data).'
  HOMEPAGE = 'https://artofproblemsolving.com/wiki/index.php/2024_AIME_I'
  RAW = ('aime24',)


class R1jaxAmc23(_CompetitionBuilder):
  """AMC 2023 (12A/12B): 40 problems with numeric answers."""

  name = 'r1jax_amc23'
  DESCRIPTION = 'AMC 2023 (via QwenLM/Qwen2.5-Math evaluation data).'
  HOMEPAGE = 'https://artofproblemsolving.com/wiki/index.php/2023_AMC_12A'
  RAW = ('amc23',)


class _CodeBuilder(_MathTextBuilder):
  """Code tasks: `CODE_FIELDS`, `tests` a list of test programs."""

  def _info(self) -> tfds.core.DatasetInfo:
    features = {k: tfds.features.Text() for k in CODE_FIELDS}
    features['tests'] = tfds.features.Sequence(tfds.features.Text())
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION, homepage=self.HOMEPAGE,
        features=tfds.features.FeaturesDict(features), disable_shuffling=True)


class R1jaxMbpp(_CodeBuilder):
  """MBPP (Austin et al., 2021): 974 short Python tasks, 3 asserts each;
  splits by task_id: prompt 1-10, test 11-510, validation 511-600, train
  601-974."""

  name = 'r1jax_mbpp'
  DESCRIPTION = ('MBPP (Mostly Basic Python Problems), CC BY 4.0; the '
                 'publishers\' task_id splits.')
  HOMEPAGE = ('https://github.com/google-research/google-research/tree/'
              'master/mbpp')
  RAW = ('mbpp',)

  def _splits(self, paths):
    return {split: self._generate_examples(mbpp_records(paths['mbpp'], split))
            for split in MBPP_SPLITS}


class R1jaxHumaneval(_CodeBuilder):
  """HumanEval (Chen et al., 2021): 164 functions to complete; test only."""

  name = 'r1jax_humaneval'
  DESCRIPTION = 'HumanEval (openai/human-eval), MIT.'
  HOMEPAGE = 'https://github.com/openai/human-eval'
  RAW = ('humaneval',)

  def _splits(self, paths):
    return {'test': self._generate_examples(
        humaneval_records(paths['humaneval']))}


# ----------------------------------------------------------------------------
# load_dataset
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  builder: type[_MathTextBuilder]
  splits: Mapping[str, str]  # split name users pass -> builder split


DATASETS = Registry('dataset')
_BOTH = {'train': 'train', 'test': 'test'}
DATASETS.add('gsm8k', DatasetSpec(R1jaxGsm8k, _BOTH))
DATASETS.add('math', DatasetSpec(R1jaxMath, _BOTH))
DATASETS.add('math500', DatasetSpec(R1jaxMath, {'test': 'test'}))
DATASETS.add('aime24', DatasetSpec(R1jaxAime24, {'test': 'test'}))
DATASETS.add('amc23', DatasetSpec(R1jaxAmc23, {'test': 'test'}))
DATASETS.add('mbpp', DatasetSpec(R1jaxMbpp, {s: s for s in MBPP_SPLITS}))
DATASETS.add('humaneval', DatasetSpec(R1jaxHumaneval, {'test': 'test'}))


class Records(Sequence[dict]):
  """Random-access view of one split; items are dicts of str (a code
  record's `tests`: a list of str)."""

  def __init__(self, source, name: str, split: str):
    self._source = source
    self.name, self.split = name, split

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.__getitems__(range(*index.indices(len(self))))
    n = len(self)
    i = index + n if index < 0 else index
    if not 0 <= i < n:
      raise IndexError(f'index {index} out of range for {n} records')
    return _decode(self._source[i])

  def __getitems__(self, indices) -> list[dict]:
    return [_decode(r) for r in self._source.__getitems__(list(indices))]

  def __iter__(self) -> Iterator[dict]:
    chunk = 1024  # batched reads: one file access per chunk, not per record
    for start in range(0, len(self), chunk):
      yield from self.__getitems__(range(start, min(start + chunk, len(self))))

  def __repr__(self) -> str:
    return f'Records({self.name!r}, {self.split!r}, n={len(self)})'


def _text(v: Any) -> str:
  return v.decode('utf-8') if isinstance(v, bytes) else str(v)


def _decode(example: Mapping[str, Any]) -> dict[str, Any]:
  return {k: [_text(x) for x in v] if isinstance(v, (list, np.ndarray))
          else _text(v) for k, v in example.items()}


def default_data_dir() -> str:
  return os.path.expanduser(os.environ.get(TFDS_DIR_ENV) or DEFAULT_TFDS_DIR)


def prepare(name: str, data_dir: str | os.PathLike | None = None,
            local_dir: str | os.PathLike | None = None,
            rebuild: bool = False) -> _MathTextBuilder:
  """Builds dataset `name` into `data_dir` unless it is there; the builder."""
  spec = DATASETS.get(name)
  builder = spec.builder(data_dir=os.fspath(data_dir or default_data_dir()),
                         local_dir=local_dir)
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if rebuild
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  tqdm_utils = tfds.core.utils.tqdm_utils
  was_active = getattr(tqdm_utils, '_active', True)
  tfds.display_progress_bar(False)  # a few seconds of work; bars are noise
  try:
    # The file format is fixed by the builder's constructor (array_record).
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(download_mode=mode))
  finally:
    tfds.display_progress_bar(was_active)
  return builder


def load_dataset(name: str, split: str | None = None,
                 data_dir: str | os.PathLike | None = None,
                 local_dir: str | os.PathLike | None = None, *,
                 rebuild: bool = False) -> Records:
  """Random-access records of `name`/`split`, built on first use.

  Args:
    name: one of DATASETS ('gsm8k', 'math', 'math500', 'aime24', 'amc23',
      'mbpp', 'humaneval').
    split: 'train' or 'test' (mbpp also 'validation' and 'prompt'); may be
      left out for single-split datasets.
    data_dir: where prepared datasets live (default `default_data_dir()`).
    local_dir: directory with the raw jsonl files (default $R1JAX_DATA_DIR;
      when neither is set, the files are downloaded from their sources).
    rebuild: build again even if the dataset is already prepared.

  Returns:
    A `Records` sequence (len, indexing, slicing, iteration) of dicts of str.
  """
  try:
    spec = DATASETS.get(name)
  except KeyError as e:  # one line naming the known ones (r1jax.errors)
    raise UnknownNameError(e.args[0]) from None
  if split is None and len(spec.splits) == 1:
    split = next(iter(spec.splits))
  if split not in spec.splits:
    raise UnknownNameError(f'Dataset {name!r} has splits '
                           f'{sorted(spec.splits)}; got {split!r}.')
  builder = prepare(name, data_dir, local_dir, rebuild)
  source = builder.as_data_source(split=spec.splits[split])
  return Records(source, name, split)


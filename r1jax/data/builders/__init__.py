"""TFDS builders for the public math and code sets: GSM8K, MATH, MATH-500,
AIME24, AMC23, MBPP, HumanEval.

    records = load_dataset('gsm8k', 'train')   # builds once, then reads
    len(records), records[0]['problem'], records[0]['answer']

Every math record is a dict of str: `id`, `problem`, `answer` (the gold final
answer, extracted once at build time), `solution` (reference solution, '' when
the source has none), `source`, `level` and `subject` ('' outside MATH).

  dataset   splits        rows        gold answer from
  gsm8k     train / test  7473 / 1319 the `#### N` line, commas removed
  math      train / test  4500 / 500  `answer` field, else the last \\boxed{}
  math500   test          500         (= math test: MATH-500)
  aime24    test          30          `answer` field
  amc23     test          40          `answer` field (27.0 -> '27')

math train is the 5000-problem MATH test split minus MATH-500 (matched on the
problem text), the usual RL pool when evaluating on MATH-500.

Code records (`CODE_FIELDS`) carry the task as a prompt-ready `problem`, the
reference `solution`, `tests` (a list of assert programs), `entry_point`,
`code_prefix` and `task` = 'code' (the reward that scores them):

  dataset    splits                              rows
  mbpp       prompt / test / validation / train  10 / 500 / 90 / 374
  humaneval  test                                164

Where the raw files come from, in order: the `local_dir` argument, the
`R1JAX_DATA_DIR` environment variable (layout of ../shared/data:
gsm8k/train.jsonl, math/test5000.jsonl, competition/aime24.jsonl,
code/mbpp.jsonl, code/humaneval.jsonl, ...), else a
download from the public source (`raw.RAW_FILES`). Prepared datasets live
under `data_dir` (default `$R1JAX_TFDS_DIR` or ~/.cache/r1jax/tfds); pass
`rebuild=True` (or delete the dataset's folder) to build again from changed
raw files. Prepare all of them with `python -m r1jax.data.builders`.

Modules: `raw` (jsonl -> records, no TFDS), `datasets` (TFDS builders in the
array_record format, `load_dataset`; TensorFlow is never imported).
"""

from r1jax.data.builders.datasets import DATASETS
from r1jax.data.builders.datasets import default_data_dir
from r1jax.data.builders.datasets import load_dataset
from r1jax.data.builders.datasets import prepare
from r1jax.data.builders.datasets import R1jaxAime24
from r1jax.data.builders.datasets import R1jaxAmc23
from r1jax.data.builders.datasets import R1jaxGsm8k
from r1jax.data.builders.datasets import R1jaxHumaneval
from r1jax.data.builders.datasets import R1jaxMath
from r1jax.data.builders.datasets import R1jaxMbpp
from r1jax.data.builders.datasets import Records
from r1jax.data.builders.datasets import TFDS_DIR_ENV
from r1jax.data.builders.raw import boxed_answer
from r1jax.data.builders.raw import called_function
from r1jax.data.builders.raw import CODE_FIELDS
from r1jax.data.builders.raw import competition_records
from r1jax.data.builders.raw import DATA_DIR_ENV
from r1jax.data.builders.raw import DataFormatError
from r1jax.data.builders.raw import FIELDS
from r1jax.data.builders.raw import gsm8k_answer
from r1jax.data.builders.raw import gsm8k_records
from r1jax.data.builders.raw import humaneval_records
from r1jax.data.builders.raw import last_boxed
from r1jax.data.builders.raw import math_records
from r1jax.data.builders.raw import MBPP_SPLITS
from r1jax.data.builders.raw import mbpp_records
from r1jax.data.builders.raw import number_text
from r1jax.data.builders.raw import RAW_FILES
from r1jax.data.builders.raw import read_jsonl

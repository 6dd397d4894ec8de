"""Math-set TFDS builders: counts, gold answers, errors, no TensorFlow."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import tensorflow_datasets as tfds

from r1jax.data import builders
from r1jax.data.builders import load_dataset

import data_helpers

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  """One prepared-dataset folder per module: later tests reuse the builds."""
  return tmp_path_factory.mktemp('tfds')


_READ = {}


def _read_all(name, split, tfds_dir, local_dir) -> list[dict]:
  """Every record of a split, read once per test session (reads cost ~ms per
  hundred records; several tests look at the same splits)."""
  key = (name, split, str(tfds_dir), str(local_dir))
  if key not in _READ:
    _READ[key] = list(load_dataset(name, split, tfds_dir, local_dir))
  return _READ[key]


def _small_raw_dir(root: pathlib.Path) -> pathlib.Path:
  """A tiny copy of every raw file, in the ../shared/data layout."""
  data_helpers.write_jsonl(root / 'gsm8k/train.jsonl', [
      {'question': 'Ann has 2 apples and buys 3. How many?',
       'answer': 'She has 2+3=<<2+3=5>>5.\n#### 5'},
      '',  # blank lines are skipped
      {'question': 'A car costs $1,200 and a bike $34. Total?',
       'answer': '1200+34=<<1200+34=1234>>1234\n#### 1,234'},
      {'question': 'Owe 7, pay 10. Change?', 'answer': '10-7=3\n#### -3'},
  ])
  data_helpers.write_jsonl(root / 'gsm8k/test.jsonl', [
      {'question': 'What is 4 times 5?', 'answer': '4*5=20\n#### 20'}])
  math5000 = [
      {'problem': 'Compute $1/2+0$.', 'level': 'Level 1', 'type': 'Algebra',
       'solution': 'It is $\\boxed{\\frac{1}{2}}$.'},
      {'problem': 'Solve $x+1=3$.', 'level': 'Level 2', 'type': 'Algebra',
       'solution': 'First $\\boxed{1}$ is wrong; $x=\\boxed{2}$.'},
      {'problem': 'Find the set.', 'level': 'Level 5', 'type': 'Counting',
       'solution': 'We get $\\boxed{\\{1, 2\\}}$.'},
      {'problem': 'Evaluate $2^3$.', 'level': 'Level 1',
       'type': 'Prealgebra', 'solution': '$2^3=\\boxed{8}$'},
  ]
  data_helpers.write_jsonl(root / 'math/test5000.jsonl', math5000)
  data_helpers.write_jsonl(root / 'math/math500.jsonl', [
      {'problem': 'Find the set.', 'solution': 'We get $\\boxed{\\{1, 2\\}}$.',
       'answer': '\\{1, 2\\}', 'subject': 'Counting', 'level': 5,
       'unique_id': 'test/counting/1.json'},
      {'problem': 'Evaluate $2^3$.', 'solution': '$2^3=\\boxed{8}$',
       'answer': '8', 'subject': 'Prealgebra', 'level': 1,
       'unique_id': 'test/prealgebra/2.json'},
  ])
  data_helpers.write_jsonl(root / 'competition/aime24.jsonl', [
      {'id': 60, 'problem': 'P1', 'solution': 'S1', 'answer': '025'},
      {'id': 61, 'problem': 'P2', 'solution': 'S2', 'answer': '204'}])
  data_helpers.write_jsonl(root / 'competition/amc23.jsonl', [
      {'id': 0, 'problem': 'Q1', 'answer': 27.0},
      {'id': 1, 'question': 'Q2', 'answer': 2.5}])
  return root


# ------------------------------------------------------------ real files


@pytest.mark.parametrize('name,split,count', [
    ('gsm8k', 'train', 7473), ('gsm8k', 'test', 1319),
    ('math', 'train', 4500), ('math', 'test', 500), ('math500', 'test', 500),
    ('aime24', 'test', 30), ('amc23', 'test', 40),
])
def test_counts_from_shared_data(shared_data, tfds_dir, name, split, count):
  records = load_dataset(name, split, data_dir=tfds_dir, local_dir=shared_data)
  assert len(records) == count
  rows = _read_all(name, split, tfds_dir, shared_data)
  assert len(rows) == count
  assert len({r['id'] for r in rows}) == count
  for r in rows:
    assert set(r) == set(builders.FIELDS)
    assert all(isinstance(v, str) for v in r.values())
    assert r['problem'].strip() and r['answer'].strip()


def test_math_train_is_test5000_minus_math500(shared_data, tfds_dir):
  train = _read_all('math', 'train', tfds_dir, shared_data)
  test = _read_all('math500', 'test', tfds_dir, shared_data)
  train_p = {r['problem'] for r in train}
  test_p = {r['problem'] for r in test}
  assert not train_p & test_p
  all_p = {json.loads(l)['problem']
           for l in open(shared_data / 'math/test5000.jsonl')}
  assert train_p | test_p == all_p


def test_known_gold_answers(shared_data, tfds_dir):
  gsm = load_dataset('gsm8k', 'train', tfds_dir, shared_data)
  assert gsm[0]['problem'].startswith('Natalia sold clips to 48')
  assert gsm[0]['answer'] == '72' and gsm[0]['id'] == 'gsm8k/train/0'
  assert gsm[345]['problem'].startswith('Adam earns $40 daily')
  assert gsm[345]['answer'] == '1080'  # '#### 1,080' without the comma
  assert '<<48/2=24>>' in gsm[0]['solution']  # the raw solution is kept
  gsm_test = load_dataset('gsm8k', 'test', tfds_dir, shared_data)
  assert gsm_test[0]['answer'] == '18'
  math = _read_all('math', 'train', tfds_dir, shared_data)
  assert math[0]['problem'].startswith('How many vertical asymptotes')
  assert math[0]['answer'] == '2'
  assert (math[0]['level'], math[0]['subject']) == ('3', 'Algebra')
  smallest = [r for r in math if r['problem'].startswith(
      'What is the smallest value of $x$ such that $|5x - 1| = |3x + 2|$')]
  assert [r['answer'] for r in smallest] == ['-\\frac{1}{8}']
  m500 = load_dataset('math500', 'test', tfds_dir, shared_data)
  assert m500[0]['answer'] == '\\left( 3, \\frac{\\pi}{2} \\right)'
  assert m500[0]['id'] == 'math500/test/precalculus/807.json'
  aime = load_dataset('aime24', None, tfds_dir, shared_data)
  assert aime[0]['problem'].startswith('Every morning Aya goes for a $9$')
  assert aime[0]['answer'] == '204' and aime[0]['source'] == 'aime24'
  amc = load_dataset('amc23', 'test', tfds_dir, shared_data)
  assert amc[0]['answer'] == '27'  # stored as 27.0 in the file
  assert amc[0]['solution'] == ''


def test_boxed_extraction_agrees_with_math500_answer_field(shared_data):
  # MATH-500 ships an `answer` field; the 4500 train problems rely on
  # extracting the last \boxed{} of the solution. Both must agree on the
  # 500 problems that carry both.
  solutions = {json.loads(l)['problem']: json.loads(l)['solution']
               for l in open(shared_data / 'math/test5000.jsonl')}
  rows = [json.loads(l) for l in open(shared_data / 'math/math500.jsonl')]
  for row in rows:
    assert builders.boxed_answer(solutions[row['problem']]) == row['answer']
    assert builders.last_boxed(solutions[row['problem']]) == row['answer']


def test_records_keep_file_order(shared_data, tfds_dir):
  records = load_dataset('gsm8k', 'test', tfds_dir, shared_data)
  lines = (shared_data / 'gsm8k/test.jsonl').read_text().splitlines()
  for i in (0, 1, 700, len(lines) - 1):
    assert records[i]['problem'] == json.loads(lines[i])['question']


def test_tfds_data_source_by_registered_name(shared_data, tfds_dir):
  source = tfds.data_source('r1jax_amc23', split='test', data_dir=tfds_dir,
                            builder_kwargs={'local_dir': shared_data})
  assert len(source) == 40
  assert source[0]['answer'] == b'27'


# ----------------------------------------------------------- small files


def test_small_files_build(tmp_path):
  raw = _small_raw_dir(tmp_path / 'raw')
  kw = dict(data_dir=tmp_path / 'tfds', local_dir=raw)
  gsm = load_dataset('gsm8k', 'train', **kw)
  assert [r['answer'] for r in gsm] == ['5', '1234', '-3']
  assert [r['id'] for r in gsm] == ['gsm8k/train/0', 'gsm8k/train/2',
                                    'gsm8k/train/3']  # line 2 was blank
  assert len(load_dataset('gsm8k', 'test', **kw)) == 1
  train = load_dataset('math', 'train', **kw)
  assert [r['answer'] for r in train] == ['\\frac{1}{2}', '2']
  assert [r['level'] for r in train] == ['1', '2']
  test = load_dataset('math', 'test', **kw)
  assert [r['answer'] for r in test] == ['\\{1, 2\\}', '8']
  assert [r['source'] for r in test] == ['math500'] * 2
  assert test[0]['id'] == 'math500/test/counting/1.json'
  assert [r['answer'] for r in load_dataset('aime24', **kw)] == ['025', '204']
  amc = load_dataset('amc23', **kw)
  assert [r['answer'] for r in amc] == ['27', '2.5']
  assert amc[1]['problem'] == 'Q2'  # `question` stands in for `problem`


def test_records_sequence_protocol(tmp_path):
  raw = _small_raw_dir(tmp_path / 'raw')
  gsm = load_dataset('gsm8k', 'train', tmp_path / 'tfds', raw)
  assert gsm[-1] == gsm[2]
  assert gsm[1:] == [gsm[1], gsm[2]]
  assert list(gsm) == [gsm[0], gsm[1], gsm[2]]
  with pytest.raises(IndexError):
    gsm[3]


def test_env_var_names_the_local_dir_and_rebuild(tmp_path, monkeypatch):
  raw = _small_raw_dir(tmp_path / 'raw')
  monkeypatch.setenv(builders.DATA_DIR_ENV, str(raw))
  assert len(load_dataset('amc23', data_dir=tmp_path / 'tfds')) == 2
  data_helpers.write_jsonl(raw / 'competition/amc23.jsonl', [{'problem': 'Q', 'answer': 1}])
  # Prepared data is reused until a rebuild is asked for.
  assert len(load_dataset('amc23', data_dir=tmp_path / 'tfds')) == 2
  rebuilt = load_dataset('amc23', data_dir=tmp_path / 'tfds', rebuild=True)
  assert [r['answer'] for r in rebuilt] == ['1']


@pytest.mark.parametrize('name,relpath,rows,lineno,what', [
    ('gsm8k', 'gsm8k/train.jsonl',
     [{'question': 'q', 'answer': '#### 1'},
      {'question': 'q', 'answer': '#### 2'},
      '{"question": "q", "answer": "#### 3"'], 3, 'invalid JSON'),
    ('gsm8k', 'gsm8k/train.jsonl',
     [{'question': 'q', 'answer': '#### 1'}, {'answer': '#### 2'}], 2,
     "'question'"),
    ('gsm8k', 'gsm8k/test.jsonl',
     [{'question': 'q', 'answer': 'no final line'}], 1, '####'),
    ('math', 'math/test5000.jsonl',
     [{'problem': 'p', 'solution': '\\boxed{1}'}, {'problem': 'p2',
                                                    'solution': 'no box'}],
     2, 'boxed'),
    ('amc23', 'competition/amc23.jsonl',
     [{'problem': 'p', 'answer': 1}, {'problem': 'p'}, {}], 2, "'answer'"),
    ('aime24', 'competition/aime24.jsonl', ['[1, 2]'], 1, 'JSON object'),
])
def test_malformed_line_names_file_and_line(tmp_path, name, relpath, rows,
                                            lineno, what):
  data_helpers.assert_malformed_line_named(
      _small_raw_dir(tmp_path / 'raw'), tmp_path / 'tfds', name, relpath, rows, lineno,
      what)


def test_missing_local_file_is_named(tmp_path):
  raw = _small_raw_dir(tmp_path / 'raw')
  (raw / 'competition/aime24.jsonl').unlink()
  with pytest.raises(FileNotFoundError, match='competition/aime24.jsonl'):
    load_dataset('aime24', 'test', tmp_path / 'tfds', raw)


def test_unknown_names_list_the_known_ones(tmp_path):
  with pytest.raises(KeyError, match='gsm8k'):
    load_dataset('gsm9k', 'train', tmp_path)
  with pytest.raises(KeyError, match="'test'"):
    load_dataset('aime24', 'train', tmp_path)
  with pytest.raises(KeyError, match='splits'):
    load_dataset('gsm8k', None, tmp_path)  # two splits: must choose


def test_number_text():
  assert builders.number_text(27.0) == '27'
  assert builders.number_text(-1.0) == '-1'
  assert builders.number_text(2.5) == '2.5'
  assert builders.number_text(' 025 ') == '025'
  assert builders.number_text(7) == '7'


def test_build_and_read_never_import_tensorflow(tmp_path):
  # A poisoned `tensorflow` package shadows any real one: importing it fails
  # the build and leaves a marker. (The tfrecord file format would import it;
  # array_record must not.) Probing with find_spec, as etils does, is fine.
  stub = tmp_path / 'stub' / 'tensorflow'
  stub.mkdir(parents=True)
  marker = tmp_path / 'tf_imported'
  (stub / '__init__.py').write_text(
      f'open({str(marker)!r}, "w").close()\n'
      'raise ImportError("r1jax must not import TensorFlow")\n')
  raw = _small_raw_dir(tmp_path / 'raw')
  script = textwrap.dedent(f"""
      import sys
      from r1jax.data.builders import load_dataset
      records = load_dataset('gsm8k', 'train', {str(tmp_path / 'tfds')!r},
                             {str(raw)!r})
      assert [r['answer'] for r in records] == ['5', '1234', '-3']
      loaded = [m for m in sys.modules
                if m == 'tensorflow' or m.startswith('tensorflow.')]
      assert not loaded, loaded
      print('ok')
  """)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(tmp_path / 'stub'), str(REPO)]))
  # Control: the stub does shadow TensorFlow and does leave its marker.
  control = subprocess.run([sys.executable, '-c', 'import tensorflow'],
                           env=env, capture_output=True, text=True, timeout=60)
  assert control.returncode != 0 and 'must not import' in control.stderr
  assert marker.exists()
  marker.unlink()
  result = subprocess.run([sys.executable, '-c', script], env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith('ok')
  assert not marker.exists()

"""Code-set TFDS builders (MBPP, HumanEval): splits, records, prompts, errors.

The real files are read from ../shared/data/code (`$R1JAX_SHARED_DATA`);
those tests skip when it is absent. The small-file tests run everywhere.
"""

import gzip
import json
import pathlib

import pytest

from r1jax.data import builders
from r1jax.data import templates
from r1jax.data.builders import load_dataset

import data_helpers


@pytest.fixture
def code_data(shared_data):
  """../shared/data, when it holds the code sets."""
  if not (shared_data / 'code' / 'mbpp.jsonl').is_file():
    pytest.skip(f'{shared_data}/code (MBPP, HumanEval) is absent')
  return shared_data


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


def _mbpp_row(task_id: int, **kw) -> dict:
  row = {'task_id': task_id, 'text': f'Write a function to add {task_id}.',
         'code': f'def add_{task_id}(x):\r\n  return x + {task_id}',
         'test_list': [f'assert add_{task_id}(0) == {task_id}',
                       f'assert add_{task_id}(1) == {task_id + 1}',
                       f'assert add_{task_id}(-{task_id}) == 0'],
         'test_setup_code': '', 'challenge_test_list': []}
  row.update(kw)
  return row


_HUMANEVAL = {
    'task_id': 'HumanEval/0',
    'prompt': 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n'
              '    """Sum of xs.\n    >>> total([1, 2])\n    3\n    """\n',
    'canonical_solution': '    return sum(xs)\n',
    'test': '\n\ndef check(candidate):\n    assert candidate([1, 2]) == 3\n'
            '    assert candidate([]) == 0\n',
    'entry_point': 'total'}


def _small_code_dir(root: pathlib.Path) -> pathlib.Path:
  rows = [_mbpp_row(i) for i in (1, 2, 11, 12, 511, 601, 602)]
  rows[3]['test_setup_code'] = 'OFFSET = 0'
  data_helpers.write_jsonl(root / 'code/mbpp.jsonl', rows)
  data_helpers.write_jsonl(root / 'code/humaneval.jsonl', [_HUMANEVAL])
  return root


def test_small_files_build_with_splits(tmp_path):
  raw = _small_code_dir(tmp_path / 'raw')
  kw = dict(data_dir=tmp_path / 'tfds', local_dir=raw)
  ids = {s: [r['id'] for r in load_dataset('mbpp', s, **kw)]
         for s in ('prompt', 'test', 'validation', 'train')}
  assert ids == {'prompt': ['mbpp/1', 'mbpp/2'],
                 'test': ['mbpp/11', 'mbpp/12'], 'validation': ['mbpp/511'],
                 'train': ['mbpp/601', 'mbpp/602']}
  r = load_dataset('mbpp', 'test', **kw)[1]
  assert set(r) == set(builders.CODE_FIELDS)
  assert r['task'] == 'code' and r['source'] == 'mbpp'
  assert r['entry_point'] == 'add_12' and r['code_prefix'] == ''
  assert r['solution'] == 'def add_12(x):\n  return x + 12'  # no \r
  # The setup code precedes each assert; the prompt shows the asserts only.
  assert r['tests'] == ['OFFSET = 0\nassert add_12(0) == 12',
                        'OFFSET = 0\nassert add_12(1) == 13',
                        'OFFSET = 0\nassert add_12(-12) == 0']
  assert 'OFFSET' not in r['problem']
  assert r['problem'].endswith(templates.CODE_INSTRUCTION)
  assert 'assert add_12(1) == 13' in r['problem']
  h = load_dataset('humaneval', None, **kw)
  assert len(h) == 1
  h = h[0]
  assert h['id'] == 'HumanEval/0' and h['entry_point'] == 'total'
  assert h['solution'] == _HUMANEVAL['prompt'] + '    return sum(xs)\n'
  assert h['tests'] == [_HUMANEVAL['test'] + '\n\ncheck(total)\n']
  assert h['code_prefix'] == _HUMANEVAL['prompt']
  assert 'def total(xs: List[int]) -> int:' in h['problem']


def test_gzipped_file_is_read(tmp_path):
  """The public HumanEval file is gzipped; either form reads the same."""
  raw = _small_code_dir(tmp_path / 'raw')
  path = raw / 'code/humaneval.jsonl'
  path.write_bytes(gzip.compress(path.read_bytes()))
  h = load_dataset('humaneval', 'test', tmp_path / 'tfds', raw)
  assert [r['entry_point'] for r in h] == ['total']


def test_code_prompt_in_the_r1_templates():
  problem = templates.mbpp_problem('Write a function to add one.',
                                   ['assert inc(1) == 2'])
  prompt = templates.render_prompt('r1_zero', problem)
  assert prompt.startswith('A conversation between User and Assistant.')
  assert 'User: Write a function to add one. Your code should pass these ' \
         'tests:\nassert inc(1) == 2\nWrite your solution' in prompt
  assert prompt.endswith('```python code block.. Assistant:')
  short = templates.render_prompt('r1_zero_short', problem)
  assert templates.CODE_INSTRUCTION in short
  he = templates.humaneval_problem('def f(x):\n    """Doc."""\n', 'f')
  assert he.startswith('Complete the Python function `f`:\n```python\n'
                       'def f(x):\n    """Doc."""\n```\n')


def test_called_function():
  code = 'def helper(x):\n  return x\ndef main(x):\n  return helper(x)\n'
  assert builders.called_function(code, 'assert main(1) == 1') == 'main'
  assert builders.called_function(code, 'assert helper(1) == 1') == 'helper'
  assert builders.called_function(code, 'assert other(1)') == ''
  assert builders.called_function('def (', 'assert f()') == ''


@pytest.mark.parametrize('name,relpath,rows,lineno,what', [
    ('mbpp', 'code/mbpp.jsonl', [_mbpp_row(11), '{"task_id": 12'], 2,
     'invalid JSON'),
    ('mbpp', 'code/mbpp.jsonl',
     [_mbpp_row(11), _mbpp_row(12), _mbpp_row(13, test_list=[])], 3,
     "'test_list' must be a non-empty list"),
    ('mbpp', 'code/mbpp.jsonl', [_mbpp_row(11, code=None)], 1, "'code'"),
    ('mbpp', 'code/mbpp.jsonl', [{**_mbpp_row(11), 'task_id': '11'}], 1,
     'task_id must be an integer'),
    ('mbpp', 'code/mbpp.jsonl', [_mbpp_row(11, test_setup_code=3)], 1,
     'test_setup_code'),
    ('humaneval', 'code/humaneval.jsonl',
     [_HUMANEVAL, {**_HUMANEVAL, 'test': ''}], 2, "'test'"),
    ('humaneval', 'code/humaneval.jsonl',
     [{**_HUMANEVAL, 'entry_point': 'not a name'}], 1, 'not an identifier'),
    ('humaneval', 'code/humaneval.jsonl', ['[1]'], 1, 'JSON object'),
])
def test_malformed_line_names_file_and_line(tmp_path, name, relpath, rows,
                                            lineno, what):
  data_helpers.assert_malformed_line_named(
      _small_code_dir(tmp_path / 'raw'), tmp_path / 'tfds', name, relpath, rows, lineno,
      what)


def test_missing_local_file_is_named(tmp_path):
  raw = _small_code_dir(tmp_path / 'raw')
  (raw / 'code/mbpp.jsonl').unlink()
  with pytest.raises(FileNotFoundError, match='code/mbpp.jsonl'):
    load_dataset('mbpp', 'test', tmp_path / 'tfds', raw)


# ------------------------------------------------------------ real files


@pytest.mark.parametrize('name,split,count', [
    ('mbpp', 'prompt', 10), ('mbpp', 'test', 500), ('mbpp', 'validation', 90),
    ('mbpp', 'train', 374), ('humaneval', 'test', 164)])
def test_counts_from_shared_data(code_data, tfds_dir, name, split, count):
  records = list(load_dataset(name, split, tfds_dir, code_data))
  assert len(records) == count
  assert len({r['id'] for r in records}) == count
  for r in records:
    assert set(r) == set(builders.CODE_FIELDS)
    assert r['task'] == 'code' and r['entry_point'].isidentifier()
    assert r['tests'] and all(isinstance(t, str) for t in r['tests'])
    assert r['problem'].endswith(templates.CODE_INSTRUCTION)
    assert r['entry_point'] in r['problem']


def test_known_records(code_data, tfds_dir):
  mbpp = load_dataset('mbpp', 'test', tfds_dir, code_data)
  assert mbpp[0]['id'] == 'mbpp/11' and mbpp[0]['entry_point'] == 'remove_Occ'
  assert mbpp[0]['tests'][0] == 'assert remove_Occ("hello","l") == "heo"'
  assert load_dataset('mbpp', 'train', tfds_dir, code_data)[0]['id'] == (
      'mbpp/601')
  # Task 367 builds a tree with the Node class its code defines: its setup
  # runs after the program, before each assert.
  by_id = {r['id']: r for r in mbpp}
  setup = json.loads((code_data / 'code/mbpp.jsonl').read_text().splitlines()[
      366])['test_setup_code']
  assert 'Node(' in setup
  assert all(t.startswith(setup + '\n') for t in by_id['mbpp/367']['tests'])
  he = load_dataset('humaneval', None, tfds_dir, code_data)
  assert he[0]['id'] == 'HumanEval/0'
  assert he[0]['entry_point'] == 'has_close_elements'
  assert he[163]['id'] == 'HumanEval/163'
  assert he[0]['tests'][0].rstrip().endswith('check(has_close_elements)')


def test_a_split_with_no_task_is_named(tmp_path):
  raw = _small_code_dir(tmp_path / 'raw')
  data_helpers.write_jsonl(raw / 'code/mbpp.jsonl', [_mbpp_row(11), _mbpp_row(601)])
  with pytest.raises(builders.DataFormatError,
                     match=r"no task with task_id in 1\.\.10 .*'prompt'"):
    load_dataset('mbpp', 'test', tmp_path / 'tfds', raw)

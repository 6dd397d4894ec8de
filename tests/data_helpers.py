"""What the data set tests share: writing raw files, checking format errors."""

import json
import pathlib

import pytest

from r1jax.data import builders


def write_jsonl(path: pathlib.Path, rows) -> None:
  """One line per row: a dict as JSON, a str as it is (a malformed line)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(''.join(
      (r if isinstance(r, str) else json.dumps(r)) + '\n' for r in rows))


def assert_malformed_line_named(raw: pathlib.Path, tfds_dir: pathlib.Path,
                                name: str, relpath: str, rows, lineno: int,
                                what: str) -> None:
  """Building data set `name` from `raw` with `rows` written to `relpath`
  fails with a DataFormatError naming the file, the line and `what`."""
  write_jsonl(raw / relpath, rows)
  with pytest.raises(builders.DataFormatError) as info:
    builders.load_dataset(name, 'test', tfds_dir, raw)
  message = str(info.value)
  assert f'{raw / relpath}:{lineno}:' in message
  assert what in message

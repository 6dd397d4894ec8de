"""Metrics out of a training loop: JSONL, TensorBoard, and a console line.

    writer = MetricWriter(workdir)
    writer.write(step, {'loss': 1.2, 'tokens_per_s': 9000.0})
    writer.close()

Only process 0 writes. TensorBoard goes through tensorboardX (no TensorFlow).
"""

import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np


def _scalar(v: Any) -> float | None:
  try:
    x = float(np.asarray(v))
  except (TypeError, ValueError):
    return None
  return x


class MetricWriter:
  """Writes scalars to metrics.jsonl and TensorBoard events under `workdir`."""

  def __init__(self, workdir: str | os.PathLike, tensorboard: bool = True,
               console: bool = True):
    self.enabled = jax.process_index() == 0
    self.console = console and self.enabled
    self._tb = None
    self._jsonl_path = None
    if not self.enabled:
      return
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # Opened for each row: a resume may rewrite the file (dropping rows of
    # steps after the checkpoint it restored) while the writer is open.
    self._jsonl_path = workdir / 'metrics.jsonl'
    self._jsonl_path.touch()
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(workdir / 'tensorboard'))

  def write(self, step: int, metrics: Mapping[str, Any],
            prefix: str = '') -> None:
    if not self.enabled:
      return
    row = {'step': int(step), 'time': time.time()}
    for k, v in metrics.items():
      x = _scalar(v)
      if x is None:
        continue
      row[prefix + k] = x if math.isfinite(x) else str(x)
      if self._tb is not None and math.isfinite(x):
        self._tb.add_scalar(prefix + k, x, int(step))
    self._append(row)

  def write_texts(self, step: int, name: str, texts: list[str]) -> None:
    if not self.enabled:
      return
    if self._tb is not None:
      self._tb.add_text(name, '\n\n---\n\n'.join(texts), int(step))
    self._append({'step': int(step), name: texts})

  def _append(self, row: Mapping[str, Any]) -> None:
    with open(self._jsonl_path, 'a', encoding='utf-8') as f:
      f.write(json.dumps(row) + '\n')

  def log(self, message: str) -> None:
    if self.console:
      print(message, file=sys.stdout, flush=True)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  """The rows (objects) of a jsonl file a run writes (metrics.jsonl,
  completions.jsonl, samples.jsonl); [] when there is none. A line cut by a
  kill mid-write is skipped (a resumed run writes its step again)."""
  if not os.path.isfile(path):
    return []
  rows = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if isinstance(row, dict):
        rows.append(row)
  return rows

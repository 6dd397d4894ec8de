"""Faults outside the train loop, each injected for real (tests/test_faults.py
has those of a run).

  fault                                        test
  killed while writing a file / a directory    test_kill_during_an_atomic_write
  math-verify worker killed mid-batch          test_math_verify_worker_killed_*
  a reward that raises                         test_a_raising_reward_*
"""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from r1jax import atomic
from r1jax import rewards
from r1jax.rewards import math_verify_pool
from r1jax.rewards.registry import REWARDS, score_each

REPO = pathlib.Path(__file__).resolve().parents[1]


def _files(root: pathlib.Path) -> dict[str, bytes]:
  """relative path -> bytes of every file under `root`."""
  return {str(p.relative_to(root)): p.read_bytes()
          for p in sorted(root.rglob('*')) if p.is_file()}


_KILL_IN_WRITE = textwrap.dedent('''
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from r1jax import atomic
    point, path = sys.argv[1], sys.argv[2]
    rename = os.rename
    die = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
    if point == 'file, before the rename':
      os.replace = die
      atomic.write_text(path, 'new')
    elif point == 'directory, while writing':
      with atomic.replaced_dir(path) as d:
        (d / 'config.json').write_text('new')
        die()
    elif point == 'directory, between the renames':
      def rename_then_die(a, b):
        rename(a, b)
        die()  # the old one moved aside, the new one not yet in place
      os.rename = rename_then_die
      with atomic.replaced_dir(path) as d:
        (d / 'config.json').write_text('new')
''')


@pytest.mark.parametrize('point', ['file, before the rename',
                                   'directory, while writing',
                                   'directory, between the renames'])
def test_kill_during_an_atomic_write(tmp_path, point):
  """run_config.json, done.json, the rejection stage's files and the
  tokenizer are written with atomic.write_text; the HF export (and the
  cached tiny base it is) with atomic.replaced_dir."""
  is_dir = point.startswith('directory')
  path = tmp_path / ('hf' if is_dir else 'done.json')
  if is_dir:
    path.mkdir()
    (path / 'config.json').write_text('old')
    (path / 'README.md').write_text('a file the user put there')
  else:
    path.write_text('old')
  script = tmp_path / 'kill_in_write.py'
  script.write_text(_KILL_IN_WRITE.format(repo=str(REPO)))
  proc = subprocess.run([sys.executable, str(script), point, str(path)],
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == -signal.SIGKILL, proc.stderr
  if is_dir:
    atomic.recover(path)  # what the next export does first
    assert _files(path) == {'config.json': b'old',
                            'README.md': b'a file the user put there'}
    with atomic.replaced_dir(path) as d:
      (d / 'config.json').write_text('new')
    assert _files(path) == {'config.json': b'new',
                            'README.md': b'a file the user put there'}
  else:
    assert path.read_text() == 'old'
    atomic.write_text(path, 'new')
    assert path.read_text() == 'new'
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      [path.name, script.name])


# ================================================= rewards


def test_math_verify_worker_killed_mid_batch_scores_its_item_zero(tmp_path):
  """A worker killed (SIGKILL) while it checks an item: that item scores 0
  and counts in reward/math/crashes, the others are checked, and the pool
  starts a new worker."""
  pairs = [('\\sqrt{8}', '2\\sqrt{2}'), ('2^{3}', '8'), ('x+x', '2x'),
           ('4\\sqrt{2}', '\\sqrt{32}')]
  completions = [f'<answer>{p}</answer>' for p, _ in pairs]
  examples = [{'answer': g} for _, g in pairs]
  options = {'math': {'num_workers': 2, 'timeout_s': 60}}
  math_verify_pool.shutdown_pool()
  pool = math_verify_pool.get_pool(2, 60)
  try:
    deadline = time.monotonic() + 120
    while not (len(pool._workers) == 2 and
               all(w.ready for w in pool._workers)):
      assert time.monotonic() < deadline, 'workers did not start'
      _, _, m = rewards.compute_rewards(completions[:1], examples[:1],
                                        {'math': 1.0}, options)
      assert m['reward/math'] == 1.0  # math-verify says these are right
    # Stopped, both workers take an item and hold it; one is then killed.
    for w in pool._workers:
      os.kill(w.proc.pid, signal.SIGSTOP)
    pids = {w.proc.pid for w in pool._workers}
    out = {}
    scorer = threading.Thread(target=lambda: out.update(result=(
        rewards.compute_rewards(completions, examples, {'math': 1.0},
                                options))))
    scorer.start()
    while not all(w.task for w in pool._workers):
      assert time.monotonic() < deadline
      time.sleep(0.01)
    victim = pool._workers[0]
    killed_item = victim.task[0]
    os.kill(victim.proc.pid, signal.SIGKILL)
    for w in pool._workers[1:]:
      os.kill(w.proc.pid, signal.SIGCONT)
    scorer.join(120)
    assert not scorer.is_alive()
    _, per, metrics = out['result']
    want = [1.0] * len(pairs)
    want[killed_item] = 0.0
    assert per['math'].tolist() == want
    assert metrics['reward/math/crashes'] == 1
    assert metrics['reward/math/timeouts'] == 0
    # The pool goes on with a fresh worker.
    assert len(pool._workers) == 2 and {w.proc.pid for w in pool._workers
                                        } != pids
    ok, stats = pool.verify(pairs)
    assert ok == [True] * len(pairs) and stats.crashes == 0
  finally:
    math_verify_pool.shutdown_pool()


_RAISES = 'test_faults_raises'
if _RAISES not in REWARDS:
  def _raises(completions, examples, metrics=None):
    def one(i):
      if 'boom' in completions[i]:
        raise RuntimeError('a bug in the reward')
      return 1.0
    return score_each(one, len(completions), reward=_RAISES, metrics=metrics)
  REWARDS.add(_RAISES, _raises, inputs=('metrics',))


def test_a_raising_reward_is_counted_and_scores_zero():
  completions = ['<think>a</think><answer>1</answer>', 'boom', 'fine', 'boom']
  total, per, metrics = rewards.compute_rewards(
      completions, [{'answer': '1'}] * 4, {_RAISES: 1.0, 'format': 0.5})
  assert per[_RAISES].tolist() == [1.0, 0.0, 1.0, 0.0]
  assert metrics[f'reward/{_RAISES}/errors'] == 2
  assert np.isfinite(total).all() and total[0] == 1.5

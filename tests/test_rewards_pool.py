"""The math-verify process pool: hard timeouts, crash recovery, start-up.

The failure tests swap the worker script for a fake one that hangs (in a
busy loop that ignores signals it could catch) or dies on request, so they do
not depend on which inputs make sympy slow.
"""

import os
import sys
import time

import pytest

from r1jax.rewards import math_verify_pool

_FAKE_WORKER = r'''
import json, os, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
reply = os.fdopen(os.dup(1), 'w')
reply.write('{"ready": true}\n'); reply.flush()
for line in sys.stdin:
  if not line.strip():
    break
  req = json.loads(line)
  if req['pred'] == 'hang':
    while True:
      pass
  if req['pred'] == 'crash':
    os._exit(3)
  reply.write(json.dumps({'id': req['id'], 'ok': req['pred'] == req['gold'],
                          'timeout': req['pred'] == 'soft-timeout'}) + '\n')
  reply.flush()
'''


@pytest.fixture
def fake_worker(tmp_path, monkeypatch):
  script = tmp_path / 'fake_worker.py'
  script.write_text(_FAKE_WORKER)
  monkeypatch.setattr(math_verify_pool, '_WORKER_SCRIPT', script)
  return script


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A zombie still answers kill(0); it has been reaped when waited on.
  with open(f'/proc/{pid}/stat') as f:
    return f.read().split(') ')[1][0] != 'Z'


def test_hung_worker_is_killed_and_replaced(fake_worker):
  with math_verify_pool.MathVerifyPool(num_workers=2, timeout_s=0.5) as pool:
    pool.verify([('1', '1')])  # start-up
    pids = {w.proc.pid for w in pool._workers}
    t0 = time.monotonic()
    ok, stats = pool.verify(
        [('1', '1'), ('hang', 'x'), ('2', '2'), ('hang', 'y'), ('3', '4')])
    elapsed = time.monotonic() - t0
    assert ok == [True, False, True, False, False]
    assert stats.hard_timeouts == 2 and stats.timeouts == 2
    assert stats.crashes == 0
    # Two items of 0.5 s at most each, plus worker restarts.
    assert elapsed < 10
    new_pids = {w.proc.pid for w in pool._workers}
    assert len(new_pids) == 2 and new_pids != pids
    for pid in pids - new_pids:
      assert not _alive(pid)
    # The replacements work.
    ok, stats = pool.verify([('5', '5'), ('6', '7')])
    assert ok == [True, False] and stats.timeouts == 0
    assert pool.total.hard_timeouts == 2


def test_crashed_worker_is_replaced(fake_worker):
  with math_verify_pool.MathVerifyPool(num_workers=1, timeout_s=5) as pool:
    ok, stats = pool.verify([('crash', 'a'), ('1', '1'), ('crash', 'b')])
    assert ok == [False, True, False]
    assert stats.crashes == 2 and stats.timeouts == 0


def test_soft_timeouts_are_counted(fake_worker):
  with math_verify_pool.MathVerifyPool(num_workers=1) as pool:
    ok, stats = pool.verify([('soft-timeout', 'a')])
    assert ok == [False] and stats.timeouts == 1 and stats.hard_timeouts == 0


def test_duplicates_and_long_answers(fake_worker):
  with math_verify_pool.MathVerifyPool(num_workers=1) as pool:
    long = 'x' * (math_verify_pool.MAX_ANSWER_CHARS + 1)
    ok, stats = pool.verify([('1', '1'), ('1', '1'), (long, long)])
    assert ok == [True, True, False]
    assert stats.items == 3


def test_close_stops_workers(fake_worker):
  pool = math_verify_pool.MathVerifyPool(num_workers=2)
  pool.verify([('1', '1')])
  procs = [w.proc for w in pool._workers]
  pool.close()
  assert all(p.poll() is not None for p in procs)
  # Used again, it restarts.
  assert pool.verify([('2', '2')])[0] == [True]
  pool.close()


def test_workers_are_fresh_interpreters():
  """Spawned, not forked: a new python running only the worker script."""
  with math_verify_pool.MathVerifyPool(num_workers=1) as pool:
    assert pool.verify([('\\sqrt{4}', '2')])[0] == [True]
    proc = pool._workers[0].proc
    with open(f'/proc/{proc.pid}/cmdline', 'rb') as f:
      argv = f.read().split(b'\0')
    assert argv[0] == sys.executable.encode()
    assert argv[-2].endswith(b'_math_verify_worker.py')
    with open(f'/proc/{proc.pid}/environ', 'rb') as f:
      env = dict(kv.split(b'=', 1) for kv in f.read().split(b'\0') if kv)
    assert b'XLA_FLAGS' not in env  # the caller's environment is not copied


@pytest.mark.parametrize('script, message', [
    ('import sys; print(\'{"error": "no math_verify"}\', flush=True)',
     'no math_verify'),
    ('import sys; sys.exit(1)', 'dying before start-up'),
])
def test_broken_workers_fail_loudly(tmp_path, monkeypatch, script, message):
  path = tmp_path / 'broken_worker.py'
  path.write_text(script)
  monkeypatch.setattr(math_verify_pool, '_WORKER_SCRIPT', path)
  pool = math_verify_pool.MathVerifyPool(num_workers=2)
  with pytest.raises(RuntimeError, match=message):
    pool.verify([('1', '2')])
  assert not pool._workers  # nothing left running

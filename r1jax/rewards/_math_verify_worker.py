"""Worker process for `math_verify_pool`: math-verify over a pipe.

Run as a script in a fresh interpreter (`python _math_verify_worker.py`); it
imports only the standard library and math-verify, never r1jax or JAX.

Protocol (JSON lines): the worker writes `{"ready": true}` once math-verify is
imported (or `{"error": "..."}` if it cannot be), then answers each request
`{"id": int, "pred": str, "gold": str, "timeout": int}` with
`{"id": int, "ok": bool, "timeout": bool}`. An empty line or EOF ends it.
"""

import json
import logging
import os
import re
import sys


class _TimeoutCounter(logging.Handler):
  """Counts math-verify's own (signal-based) timeout warnings."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.count = 0

  def emit(self, record):
    if 'Timeout' in record.getMessage():
      self.count += 1


def _wrap(answer: str) -> str:
  """Puts a bare answer in math mode so LaTeX extraction reads all of it."""
  if ('\\boxed' in answer or re.search(r'(?<!\\)\$', answer)
      or '\\(' in answer or '\\[' in answer):
    return answer  # already delimited (an escaped `\$` is not a delimiter)
  return '$' + answer + '$'


def main() -> None:
  # Reply on a private copy of stdout; anything a library prints goes to
  # stderr so that it cannot corrupt the protocol.
  reply = os.fdopen(os.dup(1), 'w', encoding='utf-8')
  os.dup2(2, 1)
  try:
    import math_verify  # pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except
    reply.write(json.dumps({'error': f'{type(e).__name__}: {e}'}) + '\n')
    reply.flush()
    return
  counter = _TimeoutCounter()
  logger = logging.getLogger('math_verify')
  logger.addHandler(counter)
  logger.propagate = False
  logger.setLevel(logging.WARNING)

  gold_cache: dict[str, object] = {}
  reply.write('{"ready": true}\n')
  reply.flush()
  for line in sys.stdin:
    if not line.strip():
      break
    req = json.loads(line)
    before = counter.count
    try:
      ok = _check(math_verify, req['pred'], req['gold'],
                  max(1, int(req.get('timeout', 5))), gold_cache)
    except BaseException:  # pylint: disable=broad-except
      # sympy can raise anything (RecursionError, TimeoutException, ...); a
      # failed check scores 0 like an unequal answer.
      ok = False
    timed_out = counter.count > before
    reply.write(json.dumps({'id': req['id'], 'ok': ok, 'timeout': timed_out}))
    reply.write('\n')
    reply.flush()


def _check(math_verify, pred: str, gold: str, alarm: int, cache: dict) -> bool:
  """math-verify's verdict on `pred == gold`; gold parses are cached."""
  if pred.strip() == gold.strip():
    return True
  gold_parsed = cache.get(gold)
  if gold_parsed is None:
    gold_parsed = math_verify.parse(_wrap(gold), parsing_timeout=alarm)
    if len(cache) > 4096:
      cache.clear()
    cache[gold] = gold_parsed
  pred_parsed = math_verify.parse(_wrap(pred), parsing_timeout=alarm)
  if not gold_parsed or not pred_parsed:
    return False
  return bool(
      math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=alarm))


if __name__ == '__main__':
  main()

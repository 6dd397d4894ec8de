"""The optimizer, the train state on the mesh, and resuming a run."""

import contextlib
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from r1jax import checkpoint as ckpt_lib
from r1jax import errors
from r1jax import metrics as metrics_lib
from r1jax import parallel
from r1jax.run import records


def make_optimizer(tc: ml_collections.ConfigDict,
                   restarts: ml_collections.ConfigDict | None = None
                   ) -> optax.GradientTransformation:
  """AdamW with linear warm-up and cosine decay; decay only on matrices.

  `tc.steps` counts optimizer updates (for GRPO: steps x iterations x
  mini-batches, which the caller passes as `tc.steps`). With `restarts`
  (the tiny base's config.ability: extend_steps, max_steps, extend_lr),
  training past tc.steps runs in chunks of extend_steps, each a cosine from
  extend_lr down to tc.lr * tc.min_lr_ratio (warm restarts); the schedule up
  to tc.steps is unchanged.
  """
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=tc.lr, warmup_steps=tc.warmup_steps,
      decay_steps=max(tc.steps, tc.warmup_steps + 1),
      end_value=tc.lr * tc.min_lr_ratio)
  if restarts is not None and restarts.max_steps > tc.steps:
    n = -(-(restarts.max_steps - tc.steps) // restarts.extend_steps)
    chunk = optax.cosine_decay_schedule(
        restarts.extend_lr, restarts.extend_steps,
        alpha=tc.lr * tc.min_lr_ratio / restarts.extend_lr)
    schedule = optax.join_schedules(
        [schedule] + [chunk] * n,
        [tc.steps + i * restarts.extend_steps for i in range(n)])
  decay_mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
  return optax.chain(
      optax.clip_by_global_norm(tc.clip_norm),
      optax.adamw(schedule, b1=tc.b1, b2=tc.b2, eps=1e-8,
                  weight_decay=tc.weight_decay, mask=decay_mask))


def init_train_state(params, optimizer: optax.GradientTransformation,
                     seed: int, mesh):
  """(state, shardings): params, optimizer state, step and RNG on the mesh.

  Optimizer moments follow their parameter's layout; counters replicate.
  """
  state = {
      'params': params,
      'opt_state': optimizer.init(params),
      'step': jnp.zeros((), jnp.int32),
      'rng': jax.random.key_data(jax.random.key(seed)),
  }
  shardings = parallel.state_shardings(mesh, state)
  return jax.device_put(state, shardings), shardings


def restore_latest(checkpointer: ckpt_lib.Checkpointer, state, shardings,
                   extra: dict[str, Any] | None = None,
                   log: Callable[[str], None] | None = None):
  """(state, extra, step) from the newest readable checkpoint, or the inputs
  and None when there is none.

  `extra` holds host-side values saved next to the arrays (the data
  iterator's state): their saved values replace the given ones.

  A newer step that cannot be read -- a damaged or missing file, a manifest
  orbax cannot decode, or a tree whose shapes do not match the target while
  an older step of the same directory does -- is moved to
  checkpoints/unreadable-<step>/ (nothing is deleted), said in one line
  naming the step and the file, and the run resumes from the newest step
  that reads; rows of metrics.jsonl and completions.jsonl after it are
  dropped (the run's workdir is the checkpoint directory's parent, as
  `open_run` makes it). When no step reads, nothing is moved and a
  CheckpointError says why, in one line: checkpoints whose shapes all differ
  from the target are another config's (as before), not damage.
  """
  extra = dict(extra or {})
  steps = checkpointer.committed_steps()
  if not steps:
    return state, extra, None
  say = log or (print if jax.process_index() == 0 else (lambda *_: None))
  target = {**ckpt_lib.abstract_like(state, shardings), **extra}
  failed = []  # (step, error), newest first
  for step in reversed(steps):
    try:
      restored = checkpointer.restore(step, abstract_state=target)
      break
    except (ckpt_lib.UnreadableCheckpointError,
            ckpt_lib.CheckpointMismatchError) as e:
      failed.append((step, e))
  else:
    raise _none_readable(checkpointer.directory, failed)
  for bad, e in failed:
    dest = checkpointer.set_aside(bad)
    say(f'checkpoint step {bad} is unreadable ({_why(e)}); moved it to '
        f'{dest} (nothing is deleted); resuming from step {step}, the newest '
        'readable checkpoint')
  if failed:
    workdir = checkpointer.directory.parent
    for name in (records.METRICS_FILE, records.COMPLETIONS_FILE):
      records.truncate_jsonl_after(workdir / name, step)
  extra = {k: restored.pop(k) for k in extra}
  return restored, extra, step


def _why(e: Exception) -> str:
  if isinstance(e, ckpt_lib.UnreadableCheckpointError):
    return f'{e.path}: {e.why}'
  problems = getattr(e, 'problems', None) or [str(e)]
  return (f'its arrays do not match this run\'s ({len(problems)} '
          f'differences; first: {problems[0]})')


def _none_readable(directory, failed) -> errors.CheckpointError:
  if all(isinstance(e, ckpt_lib.CheckpointMismatchError) for _, e in failed):
    step, e = failed[0]
    return errors.CheckpointError(
        f'{directory} holds checkpoints of another config: step {step} '
        f'has {len(e.problems)} arrays that differ from this run\'s (first: '
        f'{e.problems[0]}); resume that run with its own config, or start '
        'this one in another --workdir (nothing was moved)')
  listed = '; '.join(f'step {s}: {_why(e)}' for s, e in failed)
  return errors.CheckpointError(
      f'no checkpoint in {directory} can be read ({listed}); nothing was '
      'moved or deleted: restore the damaged files from a copy, or move the '
      'directory aside to start the run afresh')


def open_run(workdir: pathlib.Path, keep_checkpoints: int):
  """(Checkpointer, MetricWriter) of a run in `workdir`, new or resumed.

  metrics.jsonl rows of steps after the latest complete checkpoint are
  dropped first (the resumed run writes them again), so the file reads as one
  uninterrupted run.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  checkpointer = ckpt_lib.Checkpointer(workdir / 'checkpoints',
                                       max_to_keep=keep_checkpoints)
  latest = checkpointer.latest_step()
  for name in (records.METRICS_FILE, records.COMPLETIONS_FILE):
    records.truncate_jsonl_after(workdir / name, -1 if latest is None else latest)
  return checkpointer, metrics_lib.MetricWriter(workdir)


@contextlib.contextmanager
def saves_finish_on_error(checkpointer: ckpt_lib.Checkpointer):
  """Lets a checkpoint being written in the background finish before an
  exception (an error, Ctrl-C) leaves the training loop.

  Without it the save thread outlives the loop, and a run resumed in the same
  process (a notebook, a pipeline retry) races it for the same directory.
  """
  try:
    yield
  except BaseException:
    try:
      checkpointer.wait()
    except Exception:  # pylint: disable=broad-except
      pass  # the loop's own exception is the one to report
    raise

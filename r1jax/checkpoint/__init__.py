"""Orbax checkpoints of the whole train state, through orbax's v1 API.

A train state is one pytree, for example

    {'params': nnx.State, 'opt_state': optax state, 'step': int,
     'rng': typed PRNG key, 'ref_params': nnx.State (optional),
     'data_state': {'epoch': int, 'order': np.ndarray}}

    ckpt = Checkpointer(workdir / 'checkpoints', max_to_keep=3)
    if ckpt.latest_step() is not None:
      state = ckpt.restore(abstract_state=abstract_like(state, shardings))
    ...
    ckpt.save(step, state)        # async: returns once arrays are copied
    ckpt.close()                  # waits for the last save

Everything needed lives in `orbax.checkpoint.v1` (orbax-checkpoint 0.12.8):
`v1.training.Checkpointer` saves pytrees (nnx.State, optax namedtuples, typed
PRNG keys, numpy arrays and Python scalars all round-trip when restored with an
abstract target of the same structure), keeps the last N through a
preservation policy, and restores onto any sharding given by
`jax.ShapeDtypeStruct(..., sharding=...)` leaves. The v1 package lives at
`orbax.checkpoint.experimental.v1` and is exported as the attribute
`orbax.checkpoint.v1`; `import orbax.checkpoint.v1` fails, hence `ocp.v1`.

Safety, as verified in tests/test_checkpoint.py:
  * orbax writes a step to '<step>.orbax-checkpoint-tmp-<time>' and renames it
    after `commit_success.txt` is written, so an interrupted save never shows
    as a step; leftovers are removed when a Checkpointer is opened.
  * old steps are deleted only after the new step is committed.
  * on local disks orbax trusts any directory named like a step; we also
    require the commit marker, so a foreign half-copied step directory is
    ignored (neither counted nor deleted by keep-last-N).
  * a target that does not fit the checkpoint fails before any read, naming
    the first mismatched key and shapes (orbax's own error names neither).

Damage, as verified in tests/test_faults.py: a committed step whose files
cannot be read (a missing or truncated file, metadata that is not JSON, a
manifest or array orbax cannot decode) raises `UnreadableCheckpointError`
naming the step and the file (or the array) instead of orbax's error, and
`set_aside` moves such a step to '<directory>/unreadable-<step>' (never
deleted; orbax lists only step-named directories, so it is out of the way).
r1jax.run.train_state.restore_latest then resumes from the newest readable
step. Bytes flipped inside array data are not detected: orbax stores no
checksums. A save that fails (disk full, a write error) raises
`CheckpointSaveError`, one line naming the step and the cause; the steps
saved before it are untouched.
"""

from r1jax.checkpoint.checkpointer import Checkpointer
from r1jax.checkpoint.compat import CheckpointMismatchError, abstract_like, check_compatible
from r1jax.checkpoint.damage import (COMMIT_MARKER, UNREADABLE_PREFIX, CheckpointSaveError,
                                     UnreadableCheckpointError, step_problem)

__all__ = ['Checkpointer', 'CheckpointMismatchError', 'CheckpointSaveError',
           'UnreadableCheckpointError', 'COMMIT_MARKER', 'UNREADABLE_PREFIX',
           'abstract_like', 'check_compatible', 'step_problem']

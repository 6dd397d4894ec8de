"""Token-level distillation: per-token KL between teacher and student
next-token distributions (registry `DISTILL_DIVERGENCES`).

With p_t = softmax(teacher_logits / T) and p_s = softmax(student_logits / T)
over one vocabulary, per position:

  forward   KL(p_t || p_s) = sum_v p_t (log p_t - log p_s)   mode-covering;
            Hinton et al. 2015 ("Distilling the knowledge in a neural
            network"), GKD with beta = 0
  reverse   KL(p_s || p_t) = sum_v p_s (log p_s - log p_t)   mode-seeking;
            MiniLLM (Gu et al. 2024), GKD with beta = 1

both multiplied by T**2, as Hinton does, so that the gradients' scale does not
shrink as 1 / T**2 when the temperature rises and a loss weight tuned at one
temperature still means the same at another.

The teacher is frozen: its logits are taken under `stop_gradient`, so the
gradient flows into the student only. Logits beyond `vocab_size` (the padding
rows that make an embedding's size a round number, which may differ between
teacher and student) are dropped first, so both distributions live on the
tokenizer's real vocabulary.
"""

import jax
import jax.numpy as jnp

from r1jax.registry import Registry

DISTILL_DIVERGENCES = Registry('distillation divergence')


def _log_probs(logits_BxTxV: jax.Array, temperature: float) -> jax.Array:
  return jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32) / temperature,
                            axis=-1)


def _pair(student_logits_BxTxV, teacher_logits_BxTxV, temperature):
  """Log-probs of the student and of the (frozen) teacher at `temperature`."""
  return (_log_probs(student_logits_BxTxV, temperature),
          _log_probs(jax.lax.stop_gradient(teacher_logits_BxTxV), temperature))


def _kl(logp_p_BxTxV, logp_q_BxTxV) -> jax.Array:
  """KL(p || q) per position [B, T]."""
  return jnp.sum(jnp.exp(logp_p_BxTxV) * (logp_p_BxTxV - logp_q_BxTxV), axis=-1)


def _tempered_kl(student_first: bool):
  """T**2 * KL(p || q) per position, float32 [B, T], with p the student
  (reverse KL) or the teacher (forward KL)."""
  def divergence(student_logits_BxTxV: jax.Array,
                 teacher_logits_BxTxV: jax.Array,
                 temperature: float = 1.0) -> jax.Array:
    logp_s, logp_t = _pair(student_logits_BxTxV, teacher_logits_BxTxV,
                           temperature)
    p, q = (logp_s, logp_t) if student_first else (logp_t, logp_s)
    return temperature ** 2 * _kl(p, q)
  return divergence


# KL(teacher || student): mean-seeking, the usual distillation loss.
forward_kl = DISTILL_DIVERGENCES.register('forward')(_tempered_kl(False))
# KL(student || teacher): mode-seeking (MiniLLM, GKD's on-policy variant).
reverse_kl = DISTILL_DIVERGENCES.register('reverse')(_tempered_kl(True))


def distill_kl_sum(student_logits_BxTxV: jax.Array,
                   teacher_logits_BxTxV: jax.Array,
                   mask_BxT: jax.Array, *, kind: str = 'forward',
                   temperature: float = 1.0,
                   vocab_size: int | None = None) -> jax.Array:
  """Summed per-token KL over the positions where `mask_BxT` > 0.

  The caller divides by the number of masked positions (over all of its
  micro-batches: the SFT step's token mean, exact under accumulation).

  Args:
    student_logits_BxTxV: the student's logits, [B, T, V_student].
    teacher_logits_BxTxV: the teacher's logits at the same positions,
      [B, T, V_teacher] (no gradient is taken through them).
    mask_BxT: weights of the positions (the SFT loss mask); 0 = ignored,
      whatever the (finite) logits there.
    kind: a name in DISTILL_DIVERGENCES, 'forward' or 'reverse'.
    temperature: T > 0; both logits are divided by it, the KL scaled by T**2.
    vocab_size: the tokenizer's real vocabulary; logits are sliced to it.
      None = min(V_student, V_teacher).

  Returns:
    a float32 scalar.
  """
  v = vocab_size or min(student_logits_BxTxV.shape[-1],
                        teacher_logits_BxTxV.shape[-1])
  kl_BxT = DISTILL_DIVERGENCES.get(kind)(
      student_logits_BxTxV[..., :v], teacher_logits_BxTxV[..., :v],
      temperature)
  w_BxT = mask_BxT.astype(jnp.float32)
  return jnp.sum(jnp.where(w_BxT > 0, kl_BxT * w_BxT, 0.0))

"""Invariants of the decoder on the tiny presets (both families)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.model import functional, get_config, init_cache
from r1jax.model.config import RopeScaling
from r1jax.model.transformer import rope_inv_freq

PRESETS = ['tiny-test', 'tiny-test-llama']  # qwen2 (tied, bias), llama (rope)


def _batch(cfg, pads=(0, 4), length=10, seed=0):
  """Random tokens, left-padded: row i starts with pads[i] padding slots."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, cfg.vocab_size, (len(pads), length))
  mask = np.arange(length)[None, :] >= np.asarray(pads)[:, None]
  tokens = np.where(mask, tokens, 0)
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(mask)


def _forward_eager(graphdef, params, tokens, mask):
  logits, _ = functional.apply(graphdef, params, tokens,
                               functional.positions_from_mask(mask),
                               functional.causal_mask(mask))
  return logits


# Compiled once per shape: much faster than op-by-op dispatch on CPU.
_forward = jax.jit(_forward_eager, static_argnums=0)


def _random_params(cfg, seed=0):
  """Params at scales that make every path matter, drawn on the host.

  (Host numpy is much faster on a CPU-only test machine than compiling the
  initializers, and unit-scale weights give logits of order one.)
  """
  rng = np.random.default_rng(seed)
  graphdef, abstract = functional.abstract(cfg)

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    noise = rng.normal(size=s.shape)
    if 'norm' in name:
      x = 1.0 + 0.2 * noise
    elif 'bias' in name or 'embed' in name:
      x = 0.5 * noise if 'bias' in name else noise
    else:  # kernels are [in, out]
      x = noise / np.sqrt(s.shape[0])
    return jnp.asarray(x, s.dtype)

  pure = jax.tree_util.tree_map_with_path(draw, abstract.to_pure_dict())
  nnx.replace_by_pure_dict(abstract, pure)
  return graphdef, abstract


@functools.cache
def _model(name):
  cfg = get_config(name)
  graphdef, params = _random_params(cfg)
  return cfg, graphdef, params


@pytest.mark.parametrize('name', PRESETS)
def test_later_tokens_do_not_change_earlier_logits(name):
  cfg, graphdef, params = _model(name)
  tokens, mask = _batch(cfg)
  t = 6  # positions > t get new tokens
  changed = jnp.where(jnp.arange(tokens.shape[1]) > t,
                      (tokens + 7) % cfg.vocab_size, tokens)
  a = _forward(graphdef, params, tokens, mask)
  b = _forward(graphdef, params, changed, mask)
  np.testing.assert_allclose(a[:, :t + 1], b[:, :t + 1], atol=1e-6)
  assert np.abs(a[:, t + 1:] - b[:, t + 1:]).max(axis=-1).min() > 1e-3


@pytest.mark.parametrize('name', PRESETS)
def test_left_padded_row_equals_row_alone(name):
  cfg, graphdef, params = _model(name)
  tokens, mask = _batch(cfg, pads=(0, 4))
  batched = _forward(graphdef, params, tokens, mask)
  alone_tokens = tokens[1:, 4:]
  alone = _forward(graphdef, params, alone_tokens,
                   jnp.ones_like(alone_tokens, jnp.bool_))
  np.testing.assert_allclose(batched[1, 4:], alone[0], atol=2e-5)


@pytest.mark.parametrize('name', PRESETS)
def test_cached_decoding_equals_full_forward(name):
  cfg, graphdef, params = _model(name)
  tokens, mask = _batch(cfg)
  prompt = 6  # prefill 6 slots, then decode the last 4 one at a time
  b, total = tokens.shape
  full = _forward(graphdef, params, tokens, mask)
  positions = functional.positions_from_mask(mask)
  slots_S = jnp.arange(total)

  def cache_mask(first, count):
    # Query at slot q sees filled, real slots s <= q.
    q_T = first + jnp.arange(count)
    visible = slots_S[None, :] <= q_T[:, None]
    return visible[None] & mask[:, None, :]

  cache = init_cache(cfg, b, total)
  step = jax.jit(functools.partial(functional.apply, graphdef))
  logits, cache = step(params, tokens[:, :prompt], positions[:, :prompt],
                       cache_mask(0, prompt), cache, 0)
  pieces = [logits]
  for i in range(prompt, total):
    logits, cache = step(params, tokens[:, i:i + 1], positions[:, i:i + 1],
                         cache_mask(i, 1), cache, i)
    pieces.append(logits)
  cached = jnp.concatenate(pieces, axis=1)
  np.testing.assert_allclose(cached[mask], full[mask], atol=2e-5)


def _loss(graphdef, params, tokens, mask):
  logits = _forward_eager(graphdef, params, tokens, mask)
  logp = functional.token_logprobs(logits[:, :-1], tokens[:, 1:])
  return -jnp.sum(jnp.where(mask[:, 1:], logp, 0.0)), logits


_loss_grad = jax.jit(jax.value_and_grad(_loss, argnums=1, has_aux=True),
                     static_argnums=0)


@pytest.mark.parametrize('name', PRESETS)
def test_remat_matches_no_remat(name):
  cfg, graphdef, params = _model(name)
  remat_graphdef, _ = functional.abstract(cfg.replace(remat=True))
  tokens, mask = _batch(cfg)
  (_, logits), grads = _loss_grad(graphdef, params, tokens, mask)
  (_, logits_r), grads_r = _loss_grad(remat_graphdef, params, tokens, mask)
  np.testing.assert_allclose(logits_r, logits, atol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r),
                  strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  assert min(float(jnp.abs(a).max()) for a in jax.tree.leaves(grads)) > 0


@pytest.mark.parametrize('name', PRESETS)
def test_jit_matches_no_jit(name):
  cfg, graphdef, params = _model(name)
  tokens, mask = _batch(cfg)
  eager = _forward_eager(graphdef, params, tokens, mask)
  jitted = _forward(graphdef, params, tokens, mask)
  np.testing.assert_allclose(eager, jitted, atol=1e-5)


@pytest.mark.parametrize('name', PRESETS + ['tiny-cpu'])
def test_param_count_matches_config(name):
  cfg = get_config(name)
  _, params = functional.abstract(cfg)
  assert functional.count_params(params) == cfg.num_params()


@pytest.mark.parametrize('name,published', [
    # Parameter counts reported for the released checkpoints.
    ('qwen2.5-0.5b', 494_032_768),
    ('qwen2.5-1.5b', 1_543_714_304),
    ('qwen2.5-7b', 7_615_616_512),
    ('llama3.1-8b', 8_030_261_248),
    ('smollm2-135m', 134_515_008),
])
def test_num_params_of_published_models(name, published):
  assert get_config(name).num_params() == published


def test_llama3_rope_scaling_by_hand():
  # tiny-test-llama: theta 5e5, head_dim 16, original context 64, factor 8,
  # low/high frequency factors 1/4, so wavelengths below 64/4 = 16 are kept,
  # above 64/1 = 64 divided by 8, and blended in between.
  cfg = get_config('tiny-test-llama')
  inv = np.asarray(rope_inv_freq(cfg))
  assert inv.shape == (8,)
  # i=0: inv_freq 1, wavelength 2*pi < 16: unchanged.
  np.testing.assert_allclose(inv[0], 1.0, rtol=1e-6)
  # i=1: inv_freq 5e5**(-1/8) = 0.193923, wavelength 32.40: blended with
  # smooth = (64 / 32.40 - 1) / 3 = 0.325094 -> 0.193923 * (0.674906 / 8 +
  # 0.325094) = 0.0794030.
  np.testing.assert_allclose(inv[1], 0.0794030, rtol=1e-5)
  # i=2: inv_freq 5e5**(-1/4) = 0.0376060, wavelength 167.1 > 64: / 8.
  np.testing.assert_allclose(inv[2], 0.00470075, rtol=1e-5)


def test_linear_rope_scaling_divides_every_frequency():
  cfg = get_config('tiny-test')
  plain = np.asarray(rope_inv_freq(cfg))
  scaled = np.asarray(rope_inv_freq(cfg.replace(
      rope_scaling=RopeScaling(kind='linear', factor=4.0))))
  np.testing.assert_allclose(scaled, plain / 4.0, rtol=1e-6)
  np.testing.assert_allclose(plain[1], 10000.0 ** (-2 / 16), rtol=1e-6)

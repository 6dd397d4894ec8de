"""Sampler: greedy == full-forward argmax, filters, stopping, groups, log-probs,
no recompilation, sharded == single device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import parallel
from r1jax.model import (apply, causal_mask, get_config, init,
                         positions_from_mask, token_logprobs)
from r1jax.sampling import (FINISH_LENGTH, FINISH_STOP, Sampler, budget_bucket,
                            categorical, generate_text, min_p_filter,
                            segment_ends, top_k_filter, top_p_filter)
from r1jax.sampling import controls

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [20]]
NEW = 8
EOS = 1
# The init's 0.02 scale makes a tied-embedding model echo its last prompt token
# forever; 3x larger weights give varied, moderately peaked next-token
# distributions, which the tests below need.
SCALE = 3.0


def _scaled(params):
  return jax.tree.map(lambda x: x * SCALE, params)


@functools.lru_cache(maxsize=None)
def _model(preset):
  cfg = get_config(preset)
  graphdef, params = init(cfg, seed=0)
  return cfg, graphdef, _scaled(params)


@functools.lru_cache(maxsize=None)
def _sampler(preset):
  cfg, graphdef, _ = _model(preset)
  return Sampler(graphdef, cfg, pad_id=0, eos_ids=[EOS])


@functools.lru_cache(maxsize=None)
def _forward(preset):
  _, graphdef, _ = _model(preset)

  @jax.jit
  def forward(params, ids, mask):
    logits, _ = apply(graphdef, params, ids, positions_from_mask(mask),
                      causal_mask(mask))
    return logits
  return forward


def _greedy(preset, **kw):
  _, _, params = _model(preset)
  return jax.device_get(_sampler(preset).generate(
      params, PROMPTS, max_new_tokens=NEW, temperature=0.0, **kw))


def _teacher_forced_logits(preset, out):
  """[B, L, V] logits predicting each completion token (one forward over
  [prompt, completion])."""
  _, _, params = _model(preset)
  ids = np.concatenate([out.prompt_tokens, out.tokens], axis=1)
  mask = np.concatenate([out.prompt_mask, out.mask], axis=1)
  logits = _forward(preset)(params, ids, mask)
  p = out.prompt_tokens.shape[1]
  return logits[:, p - 1:-1]


def _teacher_forced_logprobs(preset, out, temperature=1.0):
  """log p(completion token) at `temperature`, from one forward over
  [prompt, completion]."""
  logits = _teacher_forced_logits(preset, out)
  if temperature != 1.0:
    logits = logits / np.float32(temperature)
  lp = token_logprobs(logits, out.tokens)
  return np.where(out.mask, np.asarray(lp), 0.0)


# ------------------------------------------------------------------ decoding
@pytest.mark.parametrize('preset', ['tiny-test', 'tiny-test-llama'])
def test_greedy_matches_argmax_of_full_forward(preset):
  out = _greedy(preset)
  _, _, params = _model(preset)
  p = out.prompt_tokens.shape[1]
  # Reference: no cache; one forward over a fixed-width buffer per new token.
  ids = np.concatenate([out.prompt_tokens,
                        np.zeros(out.tokens.shape, np.int32)], axis=1)
  mask = np.concatenate([out.prompt_mask,
                         np.zeros(out.tokens.shape, bool)], axis=1)
  for i in range(NEW):
    logits = np.asarray(_forward(preset)(params, ids, mask))
    ids[:, p + i] = np.argmax(logits[:, p + i - 1], axis=-1)
    mask[:, p + i] = True
  expected = ids[:, p:p + NEW]
  if (expected == EOS).any():
    pytest.skip('random model produced EOS; the comparison needs no stop')
  np.testing.assert_array_equal(out.tokens[:, :NEW], expected)
  assert out.tokens.shape == (len(PROMPTS), budget_bucket(NEW))
  assert (out.lengths == NEW).all()
  assert (out.finish_reason == FINISH_LENGTH).all()
  assert out.mask[:, :NEW].all() and not out.mask[:, NEW:].any()


def test_top_k_1_equals_greedy():
  _, _, params = _model('tiny-test')
  out = _sampler('tiny-test').generate(params, PROMPTS, max_new_tokens=NEW,
                                       temperature=1.0, top_k=1, seed=3)
  np.testing.assert_array_equal(out.tokens, _greedy('tiny-test').tokens)


def _first_new_token(row_L):
  """(column, token) of the first token after column 0 not seen before."""
  for col in range(1, NEW - 1):
    if row_L[col] not in row_L[:col]:
      return col, int(row_L[col])
  raise AssertionError(f'degenerate greedy output {row_L}')


def test_stop_token_ends_row_and_masks_the_rest():
  free = _greedy('tiny-test')
  row = 0
  col, stop = _first_new_token(free.tokens[row])
  assert stop != EOS
  out = _greedy('tiny-test', stop_ids=(stop,))
  np.testing.assert_array_equal(out.tokens[row, :col + 1],
                                free.tokens[row, :col + 1])
  assert out.lengths[row] == col + 1
  assert out.finish_reason[row] == FINISH_STOP
  np.testing.assert_array_equal(out.mask[row],
                                np.arange(out.mask.shape[1]) <= col)
  assert (out.tokens[row, col + 1:] == 0).all()      # pad_id
  assert (out.logprobs[row, col + 1:] == 0).all()
  for r in range(1, len(PROMPTS)):  # untouched rows are unchanged
    hits = np.flatnonzero(free.tokens[r, :NEW] == stop)
    length = hits[0] + 1 if hits.size else NEW
    assert out.lengths[r] == length
    np.testing.assert_array_equal(out.tokens[r, :length],
                                  free.tokens[r, :length])


def test_group_shares_one_prefill():
  sampler = _sampler('tiny-test')
  _, _, params = _model('tiny-test')
  n = 4
  start = len(sampler.trace_shapes)
  out = jax.device_get(sampler.generate(params, PROMPTS, max_new_tokens=NEW,
                                        n=n, temperature=1.0, seed=0))
  prefills = [s for name, s in sampler.trace_shapes[start:]
              if name == 'prefill']
  assert prefills and all(s[0] == len(PROMPTS) for s in prefills)
  assert out.tokens.shape[0] == len(PROMPTS) * n
  for b in range(len(PROMPTS)):
    group = out.tokens[b * n:(b + 1) * n]
    np.testing.assert_array_equal(out.prompt_tokens[b * n:(b + 1) * n],
                                  np.repeat(out.prompt_tokens[b * n][None],
                                            n, axis=0))
    # Temperature 1 over 256 tokens: samples of a group differ.
    assert len({tuple(r) for r in group}) > 1
  greedy_group = _greedy('tiny-test', n=n)
  np.testing.assert_array_equal(greedy_group.tokens,
                                np.repeat(_greedy('tiny-test').tokens, n, 0))


def test_seed_makes_a_call_reproducible():
  _, _, params = _model('tiny-test')
  gen = functools.partial(_sampler('tiny-test').generate, params, PROMPTS,
                          max_new_tokens=NEW, temperature=1.0)
  a, b, c = gen(seed=7), gen(seed=7), gen(seed=jax.random.key(8))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)


@pytest.mark.parametrize('settings', [
    dict(temperature=1.0),
    dict(temperature=0.7, top_p=0.9, min_p=0.01),
])
def test_logprobs_equal_teacher_forced_forward(settings):
  """The recorded log-probs are log_softmax(logits / T) of the sampled token
  (the filters do not change them without logprobs_nucleus)."""
  _, _, params = _model('tiny-test')
  out = jax.device_get(_sampler('tiny-test').generate(
      params, PROMPTS, max_new_tokens=NEW, n=2, seed=1, **settings))
  expected = _teacher_forced_logprobs('tiny-test', out,
                                      settings['temperature'])
  np.testing.assert_allclose(out.logprobs, expected, atol=1e-5, rtol=0)
  assert (out.logprobs[out.mask] < 0).all()


def _nucleus_reference(logits_NxV, tokens_N, top_p):
  """log p(token) under softmax(logits) renormalised over the top-p nucleus
  (numpy, by sorting)."""
  z = logits_NxV.astype(np.float64)
  probs = np.exp(z - z.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  order = np.argsort(-probs, axis=-1)
  sorted_p = np.take_along_axis(probs, order, -1)
  count = ((np.cumsum(sorted_p, -1) - sorted_p) < top_p).sum(-1)
  kept_mass = np.array([sorted_p[i, :c].sum() for i, c in enumerate(count)])
  picked = probs[np.arange(len(tokens_N)), tokens_N]
  return np.log(picked / kept_mass)


def test_nucleus_logprobs_are_the_renormalised_nucleus():
  """logprobs_nucleus: the same tokens (the same draw), log-probs under the
  tempered top-p distribution renormalised over its kept tokens."""
  _, _, params = _model('tiny-test')
  kw = dict(max_new_tokens=NEW, n=4, seed=2, temperature=0.7, top_p=0.9)
  gen = functools.partial(_sampler('tiny-test').generate, params, PROMPTS)
  full = jax.device_get(gen(**kw))
  nucleus = jax.device_get(gen(**kw, logprobs_nucleus=True))
  np.testing.assert_array_equal(nucleus.tokens, full.tokens)
  mask = nucleus.mask
  logits = np.asarray(_teacher_forced_logits('tiny-test', nucleus)) / 0.7
  want = _nucleus_reference(logits[mask], nucleus.tokens[mask], 0.9)
  np.testing.assert_allclose(nucleus.logprobs[mask], want, atol=1e-5, rtol=0)
  # Renormalising over a subset raises every log-prob, some strictly here.
  assert (nucleus.logprobs[mask] >= full.logprobs[mask] - 1e-6).all()
  assert (nucleus.logprobs[mask] > full.logprobs[mask] + 1e-3).any()
  assert (nucleus.logprobs[mask] <= 0).all()


LONG = 70  # budget 96: decode segments ending at tokens 32, 64 and 96


@functools.lru_cache(maxsize=None)
def _segmented(segments):
  cfg, graphdef, _ = _model('tiny-test')
  return Sampler(graphdef, cfg, pad_id=0, eos_ids=[EOS],
                 decode_segments=segments)


def test_segment_ends():
  assert segment_ends(96, 4) == (32, 64, 96)
  assert segment_ends(256, 4) == (64, 128, 192, 256)
  assert segment_ends(1024, 8) == tuple(range(128, 1025, 128))
  assert segment_ends(48, 4) == (32, 48)
  assert segment_ends(32, 4) == (32,)
  assert segment_ends(1024, 1) == (1024,)
  with pytest.raises(ValueError, match='decode_segments'):
    _segmented(0)


def test_segments_change_nothing_but_the_slots_read():
  """Across segment boundaries: greedy tokens equal one segment's, log-probs
  equal the teacher-forced forward, rows that stop early stay stopped."""
  _, _, params = _model('tiny-test')
  one, three = _segmented(1), _segmented(4)
  kw = dict(max_new_tokens=LONG, temperature=0.0)
  a = jax.device_get(one.generate(params, PROMPTS, **kw))
  b = jax.device_get(three.generate(params, PROMPTS, **kw))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
  assert (b.lengths > 64).any(), 'the test needs rows in the last segment'
  out = jax.device_get(three.generate(params, PROMPTS, max_new_tokens=LONG,
                                      n=4, temperature=1.0, seed=5))
  assert out.tokens.shape[1] == 96
  np.testing.assert_allclose(out.logprobs,
                             _teacher_forced_logprobs('tiny-test', out),
                             atol=1e-5, rtol=0)
  assert len(set(out.lengths.tolist())) > 1  # rows ended at different steps
  before = dict(three.traces)  # greedy and sampling: one program each
  three.generate(params, PROMPTS, max_new_tokens=65, n=4, seed=6)
  assert dict(three.traces) == before


def test_no_recompilation_within_buckets():
  sampler = _sampler('tiny-test')
  _, _, params = _model('tiny-test')
  kw = dict(temperature=0.8, top_p=0.95)
  sampler.generate(params, PROMPTS, max_new_tokens=NEW, **kw)
  before = dict(sampler.traces)
  # Other prompts (same bucket and count), budget, seed, values, stop ids.
  sampler.generate(params, [[3] * 30, [4, 5], [6] * 9], max_new_tokens=20,
                   temperature=0.6, top_p=0.5, seed=11, stop_ids=(7, 9))
  ids, mask = sampler._pad_prompts(PROMPTS)  # pylint: disable=protected-access
  sampler.generate(params, (ids[:, -16:], mask[:, -16:]), max_new_tokens=32,
                   **kw)
  assert dict(sampler.traces) == before
  # A new prompt bucket does compile.
  sampler.generate(params, [[3] * 40], max_new_tokens=NEW, **kw)
  assert sampler.traces['prefill'] == before['prefill'] + 1


def test_sharded_matches_single_device():
  assert jax.device_count() == 8
  cfg, graphdef, _ = _model('tiny-test')
  mesh = parallel.make_mesh({'data': 4, 'fsdp': 2})
  _, params = parallel.init_sharded(cfg, mesh, seed=0)
  params = _scaled(params)
  sampler = Sampler(graphdef, cfg, pad_id=0, eos_ids=[EOS], mesh=mesh)
  out = sampler.generate(params, PROMPTS, max_new_tokens=NEW, n=2,
                         temperature=0.0)
  single = _greedy('tiny-test', n=2)
  np.testing.assert_array_equal(np.asarray(out.tokens), single.tokens)
  np.testing.assert_allclose(np.asarray(out.logprobs), single.logprobs,
                             atol=1e-5)
  # 3 prompts were padded to 8 rows for the mesh, then the padding dropped.
  assert out.tokens.shape[0] == len(PROMPTS) * 2
  full = sampler.generate(params, PROMPTS + PROMPTS[:1] * 5,
                          max_new_tokens=NEW, temperature=0.0)
  assert len(full.tokens.sharding.device_set) == 8


def test_generate_text_strips_the_stop_token():
  free = _greedy('tiny-test')
  col, stop = _first_new_token(free.tokens[0])

  class Tok:
    def encode(self, text):
      return PROMPTS[int(text)]

    def decode(self, ids):
      return ' '.join(str(int(i)) for i in ids)

  _, _, params = _model('tiny-test')
  texts = generate_text(_sampler('tiny-test'), params, Tok(), ['0', '1', '2'],
                        max_new_tokens=NEW, temperature=0.0, stop_ids=(stop,))
  assert texts[0] == ' '.join(str(t) for t in free.tokens[0, :col])
  assert len(texts) == 3


def test_bad_settings_fail_loudly():
  sampler = _sampler('tiny-test')
  _, _, params = _model('tiny-test')
  with pytest.raises(ValueError, match='top_p'):
    sampler.generate(params, PROMPTS, max_new_tokens=4, top_p=0.0)
  with pytest.raises(ValueError, match='prompt bucket'):
    sampler.generate(params, [[3] * 2000], max_new_tokens=4)
  with pytest.raises(ValueError, match='left-padded'):
    sampler.generate(params, (np.ones((1, 4), np.int32),
                              np.array([[1, 1, 0, 0]], bool)), max_new_tokens=4)


# ------------------------------------------------------------------ controls
def _kept(logits_BxV):
  return np.isfinite(np.asarray(logits_BxV))


def test_top_p_keeps_the_nucleus():
  probs = np.array([0.05, 0.5, 0.1, 0.2, 0.15], np.float32)
  logits = jnp.log(jnp.asarray(probs))[None]
  for top_p, kept in [(0.4, {1}), (0.65, {1, 3}), (0.8, {1, 3, 4}),
                      (0.9, {1, 3, 4, 2}), (1.0, {0, 1, 2, 3, 4})]:
    got = set(np.flatnonzero(_kept(top_p_filter(logits, top_p))[0]))
    assert got == kept, (top_p, got)
  # Ties with the last kept token are kept together.
  tied = jnp.log(jnp.array([[0.3, 0.2, 0.3, 0.2]]))
  assert set(np.flatnonzero(_kept(top_p_filter(tied, 0.5))[0])) == {0, 2}


def test_top_p_matches_sort_reference():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(64, 300)).astype(np.float32) * 3
  top_p = 0.9
  got = _kept(top_p_filter(jnp.asarray(logits), top_p))
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  order = np.argsort(-probs, axis=-1)
  cum = np.cumsum(np.take_along_axis(probs, order, -1), -1)
  count = (cum - np.take_along_axis(probs, order, -1) < top_p).sum(-1)
  for r in range(len(logits)):
    assert set(np.flatnonzero(got[r])) == set(order[r, :count[r]])


def test_top_k_and_min_p_filters():
  logits = jnp.array([[0.0, 3.0, 1.0, 2.0, -1.0]])
  assert set(np.flatnonzero(_kept(top_k_filter(logits, 2))[0])) == {1, 3}
  # min_p 0.3: keep p >= 0.3 * p_max, i.e. logit >= 3 + log(0.3) = 1.796.
  assert set(np.flatnonzero(_kept(min_p_filter(logits, 0.3))[0])) == {1, 3}


def test_categorical_frequencies_and_zero_mass():
  # 300 tokens: blocks of 32 with a padded last block; only 5 have mass.
  v, rows = 300, 20000
  probs = np.zeros(v, np.float32)
  support = [0, 31, 32, 150, 299]
  probs[support] = [0.1, 0.2, 0.3, 0.15, 0.25]
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs)), (rows, v))
  draws = np.asarray(jax.jit(categorical)(jax.random.key(0), logits))
  assert set(np.unique(draws)) <= set(support)
  freq = np.bincount(draws, minlength=v)[support] / rows
  sigma = np.sqrt(probs[support] * (1 - probs[support]) / rows)
  assert (np.abs(freq - probs[support]) < 5 * sigma).all(), freq


def test_mode_keeps_only_active_filters():
  assert controls.Mode.from_settings(0.0, 5, 0.5, 0.1, 256).greedy
  mode = controls.Mode.from_settings(1.0, 0, 1.0, 0.0, 256)
  assert mode == controls.Mode()
  mode = controls.Mode.from_settings(0.6, 300, 0.95, 0.0, 256)
  assert (mode.unit_temperature, mode.top_k, mode.top_p) == (False, 0, True)
  # Nucleus log-probs only where a filter runs (one program otherwise).
  assert controls.Mode.from_settings(0.7, 0, 0.9, 0.0, 256,
                                     True).nucleus_logprobs
  assert controls.Mode.from_settings(0.7, 0, 1.0, 0.0, 256,
                                     True) == controls.Mode(
                                         unit_temperature=False)
  assert controls.Mode.from_settings(0.0, 5, 0.5, 0.0, 256,
                                     True) == controls.Mode(greedy=True)


def test_budget_bucket():
  assert [budget_bucket(n) for n in (1, 32, 33, 48, 49, 100, 128, 129, 200,
                                     1000)] == [32, 32, 48, 48, 64, 128, 128,
                                                192, 256, 1024]

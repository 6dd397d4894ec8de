"""Token-level distillation: the KL loss and the SFT stage's distill switch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import pretrain_tiny
from r1jax import metrics as metrics_lib
from r1jax.model import config as model_config
from r1jax.model import functional as fn
from r1jax.rl import distill
from r1jax.run import train_state
from r1jax.stages import distill_teacher, sft, sft_update
import grpo_helpers


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_kl_sum(student, teacher, mask, kind, temperature, vocab):
  logp_s = _np_log_softmax(student[..., :vocab].astype(np.float64) / temperature)
  logp_t = _np_log_softmax(teacher[..., :vocab].astype(np.float64) / temperature)
  if kind == 'reverse':
    logp_s, logp_t = logp_t, logp_s
  kl = (np.exp(logp_t) * (logp_t - logp_s)).sum(-1)
  return temperature ** 2 * (kl * mask).sum()


def _logits(seed, shape, scale=2.0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale,
                     jnp.float32)


# ======================================================================== loss


def test_forward_kl_by_hand():
  # p_t = (1/2, 1/2), p_s = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3).
  teacher = jnp.log(jnp.asarray([[[0.5, 0.5]]]))
  student = jnp.log(jnp.asarray([[[0.25, 0.75]]]))
  mask = jnp.ones((1, 1))
  got = distill.distill_kl_sum(student, teacher, mask, kind='forward')
  np.testing.assert_allclose(got, 0.5 * np.log(2) + 0.5 * np.log(2 / 3),
                             rtol=1e-6)
  got = distill.distill_kl_sum(student, teacher, mask, kind='reverse')
  np.testing.assert_allclose(got, 0.25 * np.log(0.5) + 0.75 * np.log(1.5),
                             rtol=1e-6)


@pytest.mark.parametrize('kind', ['forward', 'reverse'])
@pytest.mark.parametrize('temperature', [1.0, 2.5])
def test_kl_matches_numpy(kind, temperature):
  # Different padded vocab sizes; both are sliced to the real vocab of 6.
  student = _logits(0, (2, 5, 8))
  teacher = _logits(1, (2, 5, 11))
  mask = jnp.asarray(np.random.default_rng(2).random((2, 5)) < 0.6)
  got = distill.distill_kl_sum(student, teacher, mask, kind=kind,
                               temperature=temperature, vocab_size=6)
  want = _np_kl_sum(np.asarray(student), np.asarray(teacher),
                    np.asarray(mask, np.float64), kind, temperature, 6)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert got > 0


@pytest.mark.parametrize('kind', ['forward', 'reverse'])
def test_kl_zero_when_student_is_teacher(kind):
  logits = _logits(3, (2, 4, 9))
  mask = jnp.ones((2, 4))
  kl = distill.distill_kl_sum(logits, logits, mask, kind=kind,
                              temperature=0.7)
  np.testing.assert_allclose(kl, 0.0, atol=1e-6)
  # ...and the student's gradient there is zero too (a minimum).
  g = jax.grad(lambda s: distill.distill_kl_sum(s, logits, mask, kind=kind))(
      logits)
  np.testing.assert_allclose(g, 0.0, atol=1e-6)


@pytest.mark.parametrize('kind', ['forward', 'reverse'])
def test_masked_positions_are_irrelevant(kind):
  student = _logits(4, (2, 6, 7))
  teacher = _logits(5, (2, 6, 7))
  mask = jnp.asarray([[1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 0]], jnp.float32)
  pad = (mask == 0)[..., None]
  student2 = jnp.where(pad, _logits(6, (2, 6, 7), scale=30.0), student)
  teacher2 = jnp.where(pad, _logits(7, (2, 6, 7), scale=30.0), teacher)
  loss = lambda s, t: distill.distill_kl_sum(s, t, mask, kind=kind)
  np.testing.assert_allclose(loss(student, teacher), loss(student2, teacher2),
                             rtol=1e-6)
  g1 = jax.grad(loss)(student, teacher)
  g2 = jax.grad(loss)(student2, teacher2)
  np.testing.assert_allclose(g1, g2, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(g1)[np.asarray(mask) == 0], 0.0)


@pytest.mark.parametrize('kind', ['forward', 'reverse'])
def test_gradients_match_plain_formula(kind):
  student = _logits(8, (2, 3, 5))
  teacher = _logits(9, (2, 3, 5))
  mask = jnp.asarray([[1, 1, 0], [0, 1, 1]], jnp.float32)
  t = 1.5

  def plain(s_logits, t_logits):  # the numpy formula, in jnp, no tricks
    p_s = jnp.exp(s_logits / t) / jnp.exp(s_logits / t).sum(-1, keepdims=True)
    p_t = jnp.exp(t_logits / t) / jnp.exp(t_logits / t).sum(-1, keepdims=True)
    a, b = (p_t, p_s) if kind == 'forward' else (p_s, p_t)
    return t ** 2 * ((a * (jnp.log(a) - jnp.log(b))).sum(-1) * mask).sum()

  got = jax.grad(lambda s: distill.distill_kl_sum(
      s, teacher, mask, kind=kind, temperature=t))(student)
  want = jax.grad(lambda s: plain(s, teacher))(student)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # The teacher is frozen: no gradient flows into its logits.
  g_teacher = jax.grad(lambda x: distill.distill_kl_sum(
      student, x, mask, kind=kind, temperature=t))(teacher)
  np.testing.assert_array_equal(g_teacher, 0.0)


# ================================================================= train step


def _batch(b=8, t=16, vocab=256, seed=0):
  rng = np.random.default_rng(seed)
  return {
      'tokens': jnp.asarray(rng.integers(0, vocab, (b, t)), jnp.int32),
      'positions': jnp.tile(jnp.arange(t, dtype=jnp.int32), (b, 1)),
      'segment_ids': jnp.ones((b, t), jnp.int32),
      'loss_mask': jnp.asarray(rng.random((b, t)) < 0.7),
  }


def _one_step(graphdef, params, opt, batch, accum, teacher):
  state = {'params': jax.tree.map(jnp.copy, params),
           'opt_state': opt.init(params), 'step': jnp.zeros((), jnp.int32),
           'rng': jnp.zeros((2,), jnp.uint32)}
  return sft_update.make_train_step(graphdef, opt, accum, teacher)(state, batch)


def _step_setup():
  # Student and teacher of different sizes and padded vocabularies (256 real).
  graphdef, params = fn.init(model_config.get_config('tiny-test'), seed=0)
  t_cfg = model_config.get_config('tiny-test', num_layers=3, hidden_size=96,
                                  vocab_size=272)
  t_graphdef, t_params = fn.init(t_cfg, seed=1)
  make_teacher = lambda **kw: distill_teacher.Teacher(
      graphdef=t_graphdef, params=t_params, vocab_size=256,
      **{'kind': 'forward', 'weight': 0.5, 'temperature': 1.0, **kw})
  opt = train_state.make_optimizer(pretrain_tiny.get_config('runlocal').train)
  return graphdef, params, opt, make_teacher


def test_weight_zero_equals_plain_sft():
  graphdef, params, opt, make_teacher = _step_setup()
  batch = _batch()
  plain_state, plain_m = _one_step(graphdef, params, opt, batch, 2, None)
  dist_state, dist_m = _one_step(graphdef, params, opt, batch, 2,
                                 make_teacher(weight=0.0, kind='reverse'))
  assert float(dist_m['loss']) == float(plain_m['loss'])
  assert float(dist_m['nll']) == float(plain_m['loss'])
  assert float(dist_m['distill/kl']) > 0  # computed and logged all the same
  for x, y in zip(jax.tree.leaves(plain_state['params']),
                  jax.tree.leaves(dist_state['params'])):
    np.testing.assert_array_equal(x, y)


def test_distill_step_exact_under_grad_accum():
  graphdef, params, opt, make_teacher = _step_setup()
  batch = _batch(seed=1)
  teacher = make_teacher(weight=0.7, temperature=2.0)
  (s1, m1), (s4, m4) = [_one_step(graphdef, params, opt, batch, a, teacher)
                        for a in (1, 4)]
  for k in ('loss', 'nll', 'distill/kl'):
    np.testing.assert_allclose(m1[k], m4[k], rtol=1e-5)
  np.testing.assert_allclose(m1['loss'],
                             0.3 * m1['nll'] + 0.7 * m1['distill/kl'],
                             rtol=1e-6)
  for x, y in zip(jax.tree.leaves(s1['params']), jax.tree.leaves(s4['params'])):
    np.testing.assert_allclose(x, y, atol=1e-6)


# ==================================================================== stage


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
  """A tiny random teacher (2 layers, 384-row vocab) as an HF directory.

  Its final norm is scaled up so that its next-token distributions are
  peaked (a random model's are near uniform, as are the student's, and the
  KL between them would start near 0).
  """
  from r1jax.model import hf
  from r1jax.tokenizer import Tokenizer
  path = grpo_helpers.make_tiny_base(tmp_path_factory.mktemp('teacher') / 'hf',
                                     seed=3)
  cfg, _, params = hf.load_pretrained(path)
  params['norm']['weight'].value = params['norm']['weight'].value * 15.0
  hf.save_pretrained(path, cfg, params, tokenizer=Tokenizer.from_dir(path))
  return path


def _student_config(teacher_dir, steps=4, **distill_kw):
  """A smaller student (1 layer, vocab padded to 400 rows vs the teacher's
  384) with the teacher's tokenizer, on the synthetic corpus."""
  c = pretrain_tiny.get_config('runlocal')
  c.unlock()
  c.model.overrides = dict(hidden_size=32, intermediate_size=64,
                           num_layers=1, num_heads=2, num_kv_heads=1,
                           head_dim=16, vocab_size=400)
  c.tokenizer.path = str(teacher_dir)
  c.data.num_docs = 64
  c.data.num_eval_docs = 0
  c.data.seq_len = 64
  c.train.steps = steps
  c.train.batch_size = 8
  c.train.lr = 3e-2
  c.train.warmup_steps = 0
  c.train.sample_every = 0
  c.train.log_every = 1
  c.train.eval_every = 1000
  c.train.eval_batches = 1
  c.train.checkpoint_every = 1000
  c.eval.num_problems = 0
  c.export.hf = False
  c.export.hf_dir = ''
  c.distill = dict(teacher=str(teacher_dir), kind='forward', weight=0.5,
                   temperature=1.0)
  c.distill.update(distill_kw)
  return c


def test_sft_with_teacher_kl_falls(tmp_path, teacher_dir):
  out = sft.train_and_evaluate(_student_config(teacher_dir), str(tmp_path))
  rows = {r['step']: r for r in metrics_lib.read_jsonl(
      tmp_path / 'metrics.jsonl') if 'train/distill/kl' in r}
  kl = [rows[s]['train/distill/kl'] for s in (1, 2, 3, 4)]
  assert all(b < a for a, b in zip(kl, kl[1:])) and kl[-1] < 0.8 * kl[0], kl
  for r in rows.values():
    np.testing.assert_allclose(
        r['train/loss'], 0.5 * r['train/nll'] + 0.5 * r['train/distill/kl'],
        rtol=1e-5)
  assert out['distill_kl'] == pytest.approx(kl[-1])
  print('distill/kl by step:', kl)


def test_tokenizer_mismatch_fails_before_training(tmp_path, teacher_dir):
  from r1jax.model import hf
  from r1jax.tokenizer import train_bpe
  other_tok = train_bpe([f'{a} times {b} is {a * b}' for a in range(30)
                         for b in range(30)], 300,
                        config={'eos_token': '<|endoftext|>',
                                'pad_token': '<|pad|>'})
  cfg = model_config.get_config('tiny-test', vocab_size=320)
  _, params = fn.init(cfg, seed=0)
  other = tmp_path / 'other_teacher'
  hf.save_pretrained(other, cfg, params, tokenizer=other_tok)
  c = _student_config(teacher_dir)
  c.distill.teacher = str(other)
  calls = []
  orig = sft_update.make_train_step
  sft_update.make_train_step = lambda *a, **k: calls.append(1) or orig(*a, **k)
  try:
    with pytest.raises(ValueError, match='needs a shared tokenizer') as e:
      sft.train_and_evaluate(c, str(tmp_path / 'run'))
  finally:
    sft_update.make_train_step = orig
  assert "Sequence-level distillation (distill.teacher=''" in str(e.value)
  assert not calls  # failed before the step was built (or compiled)


@pytest.mark.parametrize('key,value', [('kind', 'sideways'), ('weight', 1.5),
                                       ('weight', -0.1), ('temperature', 0.0)])
def test_bad_distill_config_names_key(tmp_path, key, value):
  c = _student_config(tmp_path / 'nowhere')
  c.distill[key] = value
  with pytest.raises(ValueError, match=rf'config\.distill\.{key}='):
    sft.train_and_evaluate(c, str(tmp_path / 'run'))


def test_configs_without_distill_section_have_it_off():
  c = pretrain_tiny.get_config('runlocal')
  assert 'distill' not in c
  sft.validate_config(c)
  assert not distill_teacher.distill_config(c).teacher
  from experiments import cold_start, distill as distill_exp
  assert cold_start.get_config('runlocal').distill.teacher == ''
  sft.validate_config(distill_exp.get_config('runlocal').student_sft)

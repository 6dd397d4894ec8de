"""SFT trainer: loss falls, packing is exact, resume continues the same curve."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import metrics as metrics_lib
from r1jax.run import train_state
from r1jax.stages import sft
from r1jax.stages import sft_update
from r1jax.data import batching
from r1jax.model import functional as fn
from r1jax.model import config as model_config
from r1jax.tokenizer import train_bpe

from experiments import pretrain_tiny

_SMALL_MODEL = dict(hidden_size=64, intermediate_size=128, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=384)


def tiny_config(steps=12, **train):
  c = pretrain_tiny.get_config('runlocal')
  c.unlock()
  c.model.overrides = dict(_SMALL_MODEL)
  c.tokenizer.vocab_size = 384
  c.tokenizer.train_docs = 300
  c.data.num_docs = 400
  c.data.num_eval_docs = 32
  c.data.seq_len = 128
  c.train.steps = steps
  c.train.batch_size = 8
  c.train.warmup_steps = 2
  c.train.log_every = 1
  c.train.eval_every = 1000
  c.train.checkpoint_every = 4
  c.train.eval_batches = 2
  c.eval.num_problems = 0
  c.export.hf_dir = ''
  for k, v in train.items():
    c.train[k] = v
  return c


def _losses(workdir):
  rows = metrics_lib.read_jsonl(workdir / 'metrics.jsonl')
  return {r['step']: r['train/loss'] for r in rows if 'train/loss' in r}


def test_sft_loss_falls(tmp_path):
  out = sft.train_and_evaluate(tiny_config(steps=20, lr=3e-3), str(tmp_path))
  losses = _losses(tmp_path)
  first = np.mean([losses[s] for s in (1, 2, 3)])
  last = np.mean([losses[s] for s in (18, 19, 20)])
  assert last < 0.8 * first, (first, last)
  assert np.isfinite(out['eval_loss'])


def test_sft_resume_continues_same_curve(tmp_path):
  straight = tmp_path / 'straight'
  sft.train_and_evaluate(tiny_config(steps=8), str(straight))
  resumed = tmp_path / 'resumed'
  # Killed right after step 4 (a checkpoint step), then run again to step 8.
  assert _run_until(tiny_config(steps=8), resumed, stop_at=4) == 4
  assert max(_losses(resumed)) == 4
  sft.train_and_evaluate(tiny_config(steps=8), str(resumed))
  a, b = _losses(straight), _losses(resumed)
  for s in range(1, 9):
    np.testing.assert_allclose(b[s], a[s], rtol=1e-5, err_msg=f'step {s}')


def _run_until(config, workdir, stop_at):
  """Runs training but kills it (as a KeyboardInterrupt) after `stop_at` steps."""
  calls = {'n': 0}
  orig = sft_update.make_train_step

  def killing_make_train_step(*a, **k):
    step_fn = orig(*a, **k)

    def wrapped(state, batch):
      if calls['n'] == stop_at:
        raise KeyboardInterrupt
      calls['n'] += 1
      return step_fn(state, batch)
    return wrapped

  sft_update.make_train_step = killing_make_train_step
  try:
    sft.train_and_evaluate(config, str(workdir))
  except KeyboardInterrupt:
    pass
  finally:
    sft_update.make_train_step = orig
  return calls['n']


def test_packed_and_unpacked_losses_agree():
  texts = [f'{a} + {b} = {a + b}' for a in range(12) for b in range(5)]
  tok = train_bpe(texts, 300, config={'eos_token': '<|endoftext|>',
                                      'pad_token': '<|pad|>'})
  examples = [{'prompt': t.split('=')[0] + '=', 'completion': t.split('=')[1]}
              for t in texts[:24]]
  cfg = model_config.get_config('tiny-test', vocab_size=320)
  graphdef, params = fn.init(cfg, seed=3)

  def total_nll(pack):
    it = batching.SFTBatcher(examples, tok, batch_size=4, seq_len=64,
                             pack=pack, loss_on_prompt=False, seed=0,
                             shuffle=False, repeat=False, drop_remainder=False)
    loss, n = 0.0, 0.0
    for b in it:
      b = {k: jnp.asarray(v) for k, v in b.items()}
      l, c = sft_update.nll_sum(graphdef, params, b)
      loss += float(l)
      n += float(c)
    return loss, n

  (lp, np_), (lu, nu) = total_nll(True), total_nll(False)
  assert np_ == nu > 0
  np.testing.assert_allclose(lp / np_, lu / nu, rtol=1e-5)


def test_bad_config_names_key(tmp_path):
  c = tiny_config()
  c.train.grad_accum = 3
  with pytest.raises(ValueError, match='train.grad_accum'):
    sft.train_and_evaluate(c, str(tmp_path))
  c = tiny_config()
  c.data.source = 'nope'
  with pytest.raises(ValueError, match='data.source'):
    sft.train_and_evaluate(c, str(tmp_path))


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
  from r1jax.stages.sft import read_jsonl_examples
  path = tmp_path / 'd.jsonl'
  path.write_text(json.dumps({'prompt': 'a', 'completion': 'b'}) + '\n{oops\n')
  with pytest.raises(ValueError, match=r'd\.jsonl:2'):
    read_jsonl_examples(str(path))


def test_grad_accum_matches_full_batch():
  cfg = model_config.get_config('tiny-test')
  graphdef, params = fn.init(cfg, seed=0)
  rng = np.random.default_rng(0)
  b, t = 8, 16
  batch = {
      'tokens': jnp.asarray(rng.integers(0, 256, (b, t)), jnp.int32),
      'positions': jnp.tile(jnp.arange(t, dtype=jnp.int32), (b, 1)),
      'segment_ids': jnp.ones((b, t), jnp.int32),
      'loss_mask': jnp.asarray(rng.random((b, t)) < 0.7),
  }
  tc = tiny_config().train
  opt = train_state.make_optimizer(tc)
  outs = []
  for accum in (1, 4):
    state = {'params': jax.tree.map(jnp.copy, params),
             'opt_state': opt.init(params), 'step': jnp.zeros((), jnp.int32),
             'rng': jnp.zeros((2,), jnp.uint32)}
    state, m = sft_update.make_train_step(graphdef, opt, accum)(state, batch)
    outs.append((state['params'], m))
  np.testing.assert_allclose(outs[0][1]['loss'], outs[1][1]['loss'], rtol=1e-6)
  for x, y in zip(jax.tree.leaves(outs[0][0]), jax.tree.leaves(outs[1][0])):
    np.testing.assert_allclose(x, y, atol=1e-6)


def test_sft_from_exported_hf_checkpoint_on_jsonl(tmp_path):
  """Pretrain -> export HF dir -> SFT (distillation path) from that dir."""
  base = tiny_config(steps=2)
  base.export.hf_dir = str(tmp_path / 'hf')
  sft.train_and_evaluate(base, str(tmp_path / 'base'))
  data = tmp_path / 'traces.jsonl'
  rows = [{'prompt': f'Compute {a} + {b}.', 'completion': f' {a + b}'}
          for a in range(10) for b in range(10)]
  data.write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
  c = tiny_config(steps=3)
  c.model.hf_path = str(tmp_path / 'hf')
  c.model.remat = True
  c.tokenizer.path = ''            # the tokenizer saved with the checkpoint
  c.data.source = 'jsonl'
  c.data.path = str(data)
  c.data.loss_on_prompt = False
  c.data.pack = False
  c.train.lr = 1e-12               # so the saved weights stay the loaded ones
  out = sft.train_and_evaluate(c, str(tmp_path / 'sft'))
  assert np.isfinite(out['train_loss'])
  from r1jax import checkpoint as ckpt_lib
  from r1jax.model import hf
  _, _, exported = hf.load_pretrained(tmp_path / 'hf')
  ckpt = ckpt_lib.Checkpointer(tmp_path / 'sft' / 'checkpoints')
  assert ckpt.latest_step() == 3
  saved = ckpt.restore(3)['params']
  for x, y in zip(jax.tree.leaves(exported), jax.tree.leaves(saved)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)

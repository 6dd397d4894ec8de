"""The stages with LoRA (config.model.lora): a GRPO run checkpoints the
adapters (no second base), exports the merged model and the PEFT adapters,
and evaluates from its checkpoint; a resume onto another base, with another
rank or with LoRA off is refused; PEFT adapters of another architecture are
refused; an SFT run trains only the adapters. The model-level properties:
test_lora.py."""

import jax
import ml_collections
import numpy as np
import pytest

from r1jax import checkpoint as ckpt_lib
from r1jax import checkpoint_source
from r1jax import errors
from r1jax import parallel
from r1jax.model import config as model_config
from r1jax.model import functional as fn
from r1jax.model import hf
from r1jax.model import lora
from r1jax.model import peft
from r1jax.stages import grpo
from r1jax.stages import sft

import grpo_helpers as H
import test_sft


def _inputs(b=3, t=12, vocab=256):
  tokens = jax.random.randint(jax.random.key(0), (b, t), 0, vocab)
  mask = jax.numpy.ones((b, t), bool).at[0, :4].set(False)
  return tokens, fn.positions_from_mask(mask), fn.causal_mask(mask)


# ============================================================ stage runs


@pytest.fixture(scope='module')
def base_dir(tmp_path_factory):
  return H.make_tiny_base(tmp_path_factory.mktemp('base') / 'tiny')


def _lora_grpo(base_dir, **kw):
  kw = dict(dict(model__lora__rank=4, eval__num_problems=0, train__steps=1,
                 train__checkpoint_every=1), **kw)
  return H.grpo_config(base_dir, **kw)


def test_grpo_lora_run_checkpoints_adapters_and_exports_both(base_dir,
                                                             tmp_path):
  """Four LoRA GRPO steps: the checkpoints hold the adapters, their
  optimizer state and reference adapters (zero: the base; after the reset
  at step 2, the policy's), no second base; nothing compiles after step 2
  (step 1's programs, then the first checkpoint's and reference reset's
  copies); the merged export equals base + adapters; the PEFT export holds
  the same adapters; the workdir's checkpoint evaluates as the merged
  model."""
  out = grpo.train_and_evaluate(
      _lora_grpo(base_dir, train__steps=4, rl__ref_reset_every=2,
                 train__keep_checkpoints=4), str(tmp_path))
  assert out['step'] == 4
  rows = H.read_rows(tmp_path)
  counts = [rows[s]['train/compiles'] for s in (2, 3, 4)]
  assert counts == [counts[0]] * 3, counts
  with ckpt_lib.Checkpointer(tmp_path / 'checkpoints') as ck:
    first, second, saved = ck.restore(1), ck.restore(2), ck.restore(4)
    meta = ck.metadata()
  params = H.flat_params(saved['params'])
  assert params and all(k.endswith(("['lora_a']", "['lora_b']"))
                        for k in params)
  assert set(saved) == {'params', 'opt_state', 'step', 'rng', 'ref_params',
                        'data_state'}
  ref = H.flat_params(first['ref_params'])
  assert set(ref) == set(params) and not any(np.any(v) for v in ref.values())
  for k, v in H.flat_params(second['ref_params']).items():  # the reset
    np.testing.assert_array_equal(v, H.flat_params(second['params'])[k])
  assert meta['lora']['rank'] == 4 and meta['lora']['base']
  # The base on disk is untouched; the merged export = base + s A B.
  cfg, _, base = hf.load_pretrained(base_dir)
  _, _, merged = hf.load_pretrained(tmp_path / 'hf')
  lcfg = lora.LoRAConfig(rank=4, alpha=16.0)
  _, abstract = fn.abstract_lora(cfg, lcfg)
  adapters = peft.load_adapters(tmp_path / 'peft', cfg, lcfg, abstract)
  for k, v in H.flat_params(adapters).items():
    np.testing.assert_array_equal(v, params[k])
  want = lora.merged_params(adapters, base, lcfg)
  for k, v in H.flat_params(merged).items():
    np.testing.assert_array_equal(v, H.flat_params(want)[k], err_msg=k)
  assert any(not np.array_equal(H.flat_params(merged)[k],
                                H.flat_params(base)[k])
             for k in H.flat_params(base))
  # Evaluating the workdir's checkpoint (not its export): the adapters go
  # on the run's base, and the model is the merged export's.
  (tmp_path / 'done.json').unlink()
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  loaded = checkpoint_source.load(tmp_path, mesh)
  assert loaded.kind == 'workdir' and loaded.step == 4
  args = _inputs(vocab=cfg.vocab_size)
  got, _ = fn.apply(loaded.graphdef, loaded.params, *args)
  want_logits, _ = fn.apply(fn.abstract(cfg)[0], merged, *args)
  np.testing.assert_allclose(got, want_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_grpo_lora_resume_refuses_another_base_or_rank(base_dir, tmp_path,
                                                       tmp_path_factory):
  """Refused at start-up in one line, before any array is read: the same
  path now holding another base (its fingerprint), another rank, LoRA
  turned off, and PEFT adapters made for another architecture."""
  other = tmp_path_factory.mktemp('other') / 'tiny'
  H.make_tiny_base(other)
  work = tmp_path / 'run'
  grpo.train_and_evaluate(_lora_grpo(other), str(work))
  # The same hf_path, another base: the fingerprint differs.
  H.make_tiny_base(other, seed=1)
  with pytest.raises(errors.CheckpointError) as e:
    grpo.train_and_evaluate(_lora_grpo(other, train__steps=2), str(work))
  assert 'LoRA adapters trained on another base model' in str(e.value)
  with pytest.raises(errors.CheckpointError) as e:
    grpo.train_and_evaluate(
        _lora_grpo(base_dir, train__steps=2, model__lora__rank=8), str(work))
  assert 'holds LoRA adapters of rank 4 but config.model.lora.rank=8' in str(
      e.value)
  with pytest.raises(errors.CheckpointError) as e:
    grpo.train_and_evaluate(
        _lora_grpo(base_dir, train__steps=2, model__lora__rank=0), str(work))
  assert 'config.model.lora.rank=0' in str(e.value)
  # PEFT adapters of another architecture (3 layers) as the start.
  cfg3 = model_config.get_config('tiny-cpu', **dict(H.SMALL_MODEL,
                                                    num_layers=3))
  lcfg = lora.LoRAConfig(rank=4, alpha=16.0)
  _, abstract = fn.abstract_lora(cfg3, lcfg)
  peft.save_adapters(tmp_path / 'other_peft', cfg3, lcfg,
                     lora.init_adapters(abstract, jax.random.key(0)))
  with pytest.raises(errors.ConfigError) as e:
    grpo.train_and_evaluate(_lora_grpo(
        base_dir, model__lora__adapter_path=str(tmp_path / 'other_peft')),
        str(tmp_path / 'fresh'))
  assert 'adapter_model.safetensors is for another base model' in str(e.value)


@pytest.mark.slow
def test_sft_lora_run_trains_adapters_only(tmp_path):
  """The SFT stage (pretraining config of a random preset) with LoRA: the
  loss falls, the checkpoint holds adapters only, the export is merged."""
  c = test_sft.tiny_config(steps=6, lr=1e-2)
  c.model.lora = ml_collections.ConfigDict(dict(lora.DEFAULTS, rank=8,
                                                dropout=0.1))
  c.export.hf = True
  out = sft.train_and_evaluate(c, str(tmp_path))
  assert out['step'] == 6 and np.isfinite(out['train_loss'])
  params = H.final_params(tmp_path)
  assert all('lora_' in k for k in params)
  assert (tmp_path / 'hf' / 'config.json').is_file()
  assert (tmp_path / 'peft' / peft.CONFIG_FILE).is_file()

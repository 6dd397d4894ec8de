"""A tiny base model on disk and small GRPO configs, for the GRPO tests."""

import pathlib
import re

import jax
import numpy as np

from experiments import zero
from r1jax import rewards as rewards_lib

# Test rewards: one that varies with the text (so a random model's groups
# have spread and the update is not zero), one that is constant.
if 'test_length' not in rewards_lib.REWARDS:
  rewards_lib.REWARDS.add(
      'test_length',
      lambda completions, examples: np.asarray(
          [len(c) % 5 / 4 for c in completions], np.float32))
  rewards_lib.REWARDS.add(
      'test_constant',
      lambda completions, examples: np.full(len(completions), 0.7, np.float32))

SMALL_MODEL = dict(hidden_size=64, intermediate_size=128, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=384)


def make_tiny_base(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """A random-init tiny Qwen2 + a BPE tokenizer trained on the corpus, as a
  Hugging Face directory (what experiments/zero.py loads its base from)."""
  from r1jax.data import corpus
  from r1jax.model import config as model_config
  from r1jax.model import functional as fn
  from r1jax.model import hf
  from r1jax.tokenizer import train_bpe
  ccfg = corpus.CorpusConfig(r1_template='r1_zero_short')
  texts = corpus.tokenizer_training_texts(ccfg, n_docs=300, seed=0)
  tok = train_bpe(texts, 384, config={'eos_token': '<|endoftext|>',
                                      'pad_token': '<|pad|>',
                                      'chat_format': 'plain'})
  cfg = model_config.get_config('tiny-cpu', **SMALL_MODEL)
  _, params = fn.init(cfg, seed=seed)
  hf.save_pretrained(path, cfg, params, tokenizer=tok)
  return path


def grpo_config(base_dir, **kw):
  """zero.py:runlocal on the tiny base: 8 prompts x 4 samples, 16 tokens."""
  c = zero.get_config('runlocal')
  c.model.hf_path = str(base_dir)
  c.model.pretrain_if_missing = False
  c.rl.prompts_per_step = 8
  c.rl.group_size = 4
  c.rl.num_minibatches = 2
  c.rl.grad_accum = 2
  c.data.num_train = 200
  c.sampling.max_new_tokens = 16
  c.eval.max_new_tokens = 16
  c.eval.num_problems = 8
  c.eval.num_samples = 2
  c.eval.ks = (1, 2)
  c.eval.batch_size = 16
  c.eval.at_start = False
  c.train.steps = 2
  c.train.warmup_steps = 0
  c.train.lr = 1e-3
  c.rewards.weights = {'arithmetic': 1.0, 'format': 0.5, 'test_length': 1.0}
  for dotted, value in kw.items():
    node = c
    parts = dotted.split('__')
    for p in parts[:-1]:
      node = node[p]
    node[parts[-1]] = value
  return c


def inject_nan(monkeypatch, at_step: int) -> None:
  """GRPO step `at_step` (1-based) trains on NaN advantages, so its loss and
  gradient are NaN: the stage's non-finite guard must stop the run. Wraps
  `grpo_update.make_update_fn`; the jitted update itself is the real one."""
  from r1jax.stages import grpo_update
  real = grpo_update.make_update_fn

  def make_update_fn(*args, **kwargs):
    update = real(*args, **kwargs)

    def poisoned(state, batch):
      if int(state['step']) + 1 == at_step:
        batch = batch.replace(adv=batch.adv * np.float32(np.nan))
      return update(state, batch)
    return poisoned

  monkeypatch.setattr(grpo_update, 'make_update_fn', make_update_fn)


def record_batches(monkeypatch) -> list:
  """(HostRollout, Batch as numpy) of every GRPO step the stage runs from
  now on, in order (wraps `grpo_update.make_batch`)."""
  from r1jax.stages import grpo_update
  real, seen = grpo_update.make_batch, []

  def make_batch(host, *args, **kwargs):
    batch, metrics = real(host, *args, **kwargs)
    seen.append((host, jax.device_get(batch)))
    return batch, metrics

  monkeypatch.setattr(grpo_update, 'make_batch', make_batch)
  return seen


def read_rows(workdir) -> dict[int, dict]:
  """metrics.jsonl merged per step (train/, time/ and eval/ rows)."""
  from r1jax import metrics as metrics_lib
  out: dict[int, dict] = {}
  for row in metrics_lib.read_jsonl(pathlib.Path(workdir) / 'metrics.jsonl'):
    out.setdefault(row['step'], {}).update(row)
  return out


def final_params(workdir) -> dict[str, np.ndarray]:
  """The params of the latest checkpoint, flattened to path -> array."""
  from r1jax import checkpoint as ckpt_lib
  with ckpt_lib.Checkpointer(pathlib.Path(workdir) / 'checkpoints') as c:
    state = c.restore()
  return flat_params(state['params'])


def flat_params(tree) -> dict[str, np.ndarray]:
  """path -> array, with nnx.State's '.value' and a dict's ['value'] alike."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  norm = lambda k: re.sub(r"\['(\d+)'\]", r'[\1]', jax.tree_util.keystr(
      k).replace('.value', '').replace("['value']", ''))
  return {norm(k): np.asarray(v) for k, v in flat}


def base_params(base_dir) -> dict[str, np.ndarray]:
  from r1jax.model import hf
  return flat_params(hf.load_pretrained(base_dir)[2])

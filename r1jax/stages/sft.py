r"""Supervised fine-tuning, distillation and tiny-model pretraining.

    python -m r1jax.train --config=experiments/pretrain_tiny.py --workdir=runs/tiny

Next-token loss over the tokens marked as targets (completions, or every token
for pretraining), packed or bucketed sequences, AdamW with warm-up and cosine
decay, gradient clipping and accumulation, periodic eval loss and sample
generations, orbax checkpoints with exact resume, metrics to TensorBoard and
JSONL. Data-parallel / fsdp through the mesh in `config.mesh`.
"""

import functools
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from r1jax import checkpoint as ckpt_lib
from r1jax import metrics as metrics_lib
from r1jax import parallel
from r1jax.data import pipeline
from r1jax.model import functional as fn
from r1jax.sft_setup import (build_examples, load_model_and_tokenizer,
                             validate_config)

# ======================================================================= loss


def nll_sum(graphdef, params, batch) -> tuple[jax.Array, jax.Array]:
  """Summed next-token NLL over target tokens, and the number of targets.

  `batch['loss_mask'][b, t]` marks tokens[b, t] as a target predicted from the
  tokens before it in the same segment.
  """
  tokens_BxT = batch['tokens']
  mask_BxTxT = pipeline.segment_mask(batch['segment_ids'])
  logits_BxTxV, _ = fn.apply(graphdef, params, tokens_BxT, batch['positions'],
                             mask_BxTxT)
  logp_BxT1 = fn.token_logprobs(logits_BxTxV[:, :-1], tokens_BxT[:, 1:])
  w_BxT1 = batch['loss_mask'][:, 1:].astype(jnp.float32)
  return -(logp_BxT1 * w_BxT1).sum(), w_BxT1.sum()


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warm-up and cosine decay; decay only on matrices."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
      decay_steps=max(cfg.steps, cfg.warmup_steps + 1),
      end_value=cfg.lr * cfg.min_lr_ratio)
  decay_mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
  return optax.chain(
      optax.clip_by_global_norm(cfg.clip_norm),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=1e-8,
                  weight_decay=cfg.weight_decay, mask=decay_mask))


def make_train_step(graphdef, optimizer, grad_accum: int):
  """A jitted step: (state, batch) -> (state, metrics); state is donated.

  The batch is split into `grad_accum` micro-batches along its leading axis;
  gradients of the summed NLL are accumulated and divided by the total number
  of target tokens, so the update equals the one of the whole batch.
  """

  def step(state, batch):
    params = state['params']
    micro = jax.tree.map(
        lambda x: x.reshape((grad_accum, x.shape[0] // grad_accum) + x.shape[1:]),
        batch)
    grad_fn = jax.value_and_grad(
        lambda p, b: nll_sum(graphdef, p, b), has_aux=True)

    def body(carry, mb):
      g_acc, loss_acc, n_acc = carry
      (loss, n), g = grad_fn(params, mb)
      g_acc = jax.tree.map(jnp.add, g_acc, g)
      return (g_acc, loss_acc + loss, n_acc + n), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, loss_sum, n), _ = jax.lax.scan(
        body, (zeros, jnp.zeros(()), jnp.zeros(())), micro)
    denom = jnp.maximum(n, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = optimizer.update(grads, state['opt_state'], params)
    new_params = optax.apply_updates(params, updates)
    metrics = {
        'loss': loss_sum / denom,
        'grad_norm': optax.global_norm(grads),
        'target_tokens': n,
    }
    new_state = dict(state, params=new_params, opt_state=opt_state,
                     step=state['step'] + 1)
    return new_state, metrics

  return jax.jit(step, donate_argnums=0)


def make_eval_step(graphdef):
  @jax.jit
  def eval_step(params, batch):
    return nll_sum(graphdef, params, batch)
  return eval_step


# ================================================================== training


def _sample_texts(config, model_cfg, graphdef, params, tokenizer, mesh,
                  examples, num: int = 4) -> list[str]:
  """Greedy continuations of a few held-out prompts (a document's question
  part when there is no prompt), rendered as 'prompt => completion'."""
  from r1jax.sampling import Sampler  # pylint: disable=g-import-not-at-top
  sampler = _SAMPLERS.get(id(graphdef))
  if sampler is None:
    sampler = Sampler(graphdef, model_cfg, pad_id=tokenizer.pad_id,
                      eos_ids=[tokenizer.eos_id], mesh=mesh)
    _SAMPLERS[id(graphdef)] = sampler
  prompts = [ex['prompt'] or _document_prompt(ex['completion'])
             for ex in examples[:num]]
  ids = [tokenizer.encode(p) for p in prompts]
  out = sampler.generate(params, ids, max_new_tokens=config.train.sample_tokens,
                         temperature=0.0, seed=0)
  toks, mask = np.asarray(out.tokens), np.asarray(out.mask)
  return [f'{p} => {tokenizer.decode(t[m])}'
          for p, t, m in zip(prompts, toks, mask)]


_SAMPLERS: dict[int, Any] = {}
_ANSWER_CUES = ('Assistant:', 'Answer:', 'Solution:', 'A:')


def _document_prompt(doc: str) -> str:
  """A pretraining document's question part: up to its answer cue."""
  for cue in _ANSWER_CUES:
    if cue in doc:
      return doc[:doc.index(cue) + len(cue)]
  return doc[:len(doc) // 2]


def _eval_loss(eval_step, params, batches) -> float:
  total, count = 0.0, 0.0
  for b in batches:
    loss, n = eval_step(params, b)
    total += float(loss)
    count += float(n)
  return total / max(count, 1.0)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Runs (or resumes) SFT in `workdir`; returns the final metrics."""
  validate_config(config)
  t_start = time.perf_counter()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  _SAMPLERS.clear()
  writer = metrics_lib.MetricWriter(workdir)
  tc = config.train
  mesh = parallel.make_mesh(dict(config.mesh))

  # ------------------------------------------------------ model & tokenizer
  model_cfg, graphdef, params, tokenizer = load_model_and_tokenizer(
      config, workdir, mesh)
  writer.log(f'model: {model_cfg.num_layers} layers, '
             f'{fn.count_params(params):,} params; vocab {tokenizer.vocab_size}')

  # ------------------------------------------------------------------ data
  train_examples, eval_examples = build_examples(config, tokenizer)
  batcher_kw = dict(
      batch_size=tc.batch_size, seq_len=config.data.seq_len,
      pack=config.data.pack, loss_on_prompt=config.data.loss_on_prompt,
      process_index=jax.process_index(), process_count=jax.process_count())
  train_iter = pipeline.SFTBatcher(train_examples, tokenizer, seed=config.seed,
                                   **batcher_kw)
  eval_batches = []
  if eval_examples:
    eval_iter = pipeline.SFTBatcher(eval_examples, tokenizer, seed=1,
                                    shuffle=False, repeat=False,
                                    drop_remainder=False, **batcher_kw)
    for b in eval_iter:
      eval_batches.append(b)
      if len(eval_batches) >= tc.eval_batches:
        break

  # ------------------------------------------------------------ train state
  optimizer = make_optimizer(tc)
  state = {
      'params': params,
      'opt_state': optimizer.init(params),
      'step': jnp.zeros((), jnp.int32),
      'rng': jax.random.key_data(jax.random.key(config.seed)),
  }
  # Optimizer moments follow their parameter's layout; counters replicate.
  shardings = parallel.state_shardings(mesh, state)
  state = jax.device_put(state, shardings)
  checkpointer = ckpt_lib.Checkpointer(workdir / 'checkpoints',
                                       max_to_keep=tc.keep_checkpoints)
  latest = checkpointer.latest_step()
  if latest is not None:
    restored = checkpointer.restore(
        latest, abstract_state={**ckpt_lib.abstract_like(state, shardings),
                                'data_state': train_iter.get_state()})
    train_iter.set_state(restored.pop('data_state'))
    state = restored
    writer.log(f'resumed from step {latest}')
  start_step = int(state['step'])

  # Each host feeds its own rows; they form one global batch over the mesh.
  to_device = lambda b: parallel.host_local_to_global(
      {k: np.asarray(v) for k, v in b.items()}, mesh)
  eval_batches = [to_device(b) for b in eval_batches]
  train_step = make_train_step(graphdef, optimizer, tc.grad_accum)
  eval_step = make_eval_step(graphdef)

  # ------------------------------------------------------------------- loop
  history = []
  t_last, tokens_since = time.perf_counter(), 0.0
  step = start_step
  final: dict[str, Any] = {}
  while step < tc.steps:
    host_batch = next(train_iter)
    tokens_since += float((np.asarray(host_batch['segment_ids']) > 0).sum())
    state, m = train_step(state, to_device(host_batch))
    step += 1
    if step % tc.log_every == 0 or step == tc.steps:
      m = jax.device_get(m)
      loss = float(m['loss'])
      if not np.isfinite(loss):
        raise FloatingPointError(f'non-finite loss {loss} at step {step}')
      dt = time.perf_counter() - t_last
      m = {k: float(v) for k, v in m.items()}
      m['tokens_per_s'] = tokens_since / max(dt, 1e-9)
      t_last, tokens_since = time.perf_counter(), 0.0
      writer.write(step, m, prefix='train/')
      writer.log(metrics_lib.progress_line(
          step, tc.steps, m, ('loss', 'grad_norm', 'tokens_per_s')))
      history.append((step, loss))
      final['train_loss'] = loss
    if eval_batches and (step % tc.eval_every == 0 or step == tc.steps):
      eval_loss = _eval_loss(eval_step, state['params'], eval_batches)
      writer.write(step, {'loss': eval_loss}, prefix='eval/')
      writer.log(f'step {step}: eval loss {eval_loss:.4f}')
      final['eval_loss'] = eval_loss
    if (tc.sample_every and eval_examples and
        (step % tc.sample_every == 0 or step == tc.steps)):
      texts = _sample_texts(config, model_cfg, graphdef, state['params'],
                            tokenizer, mesh, eval_examples)
      writer.write_texts(step, 'samples', texts)
      writer.log(f'step {step}: sample {texts[0]!r}')
    if step % tc.checkpoint_every == 0 or step == tc.steps:
      checkpointer.save(step, {**state, 'data_state': train_iter.get_state()})
  checkpointer.wait()
  final['history'] = history

  # ------------------------------------------------------------ end of run
  if config.export.hf_dir:
    from r1jax.model import hf  # pylint: disable=g-import-not-at-top
    hf.save_pretrained(config.export.hf_dir, model_cfg, state['params'],
                       tokenizer=tokenizer)
    writer.log(f'exported Hugging Face checkpoint to {config.export.hf_dir}')
  tokenizer.save(workdir / 'tokenizer')
  if config.eval.num_problems > 0:
    from r1jax.sft_eval import evaluate_base  # pylint: disable=g-import-not-at-top
    stats = evaluate_base(config, model_cfg, graphdef, state['params'],
                          tokenizer, mesh)
    writer.write(step, {k: v for k, v in stats.items()
                        if isinstance(v, float)}, prefix='final/')
    writer.write_texts(step, 'final/samples', stats.get('samples', []))
    final.update(stats)
  final['wall_time_s'] = time.perf_counter() - t_start
  writer.log(f'done in {final["wall_time_s"]:.0f} s')
  checkpointer.close()
  writer.close()
  return final

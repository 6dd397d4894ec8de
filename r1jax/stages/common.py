"""What every stage needs, written once.

  * config checks that fail at start-up with one line naming the key;
  * the model + tokenizer a run starts from (HF directory, GGUF file, or a
    random init of a preset), sharded onto the run's mesh;
  * the optimizer (AdamW, warm-up + cosine, global-norm clipping);
  * checkpoint resume (train state + data iterator position) and the
    metrics.jsonl rows of steps that a resume will redo;
  * held-out evaluation (pass@1 over k samples, cons@k, pass@k, greedy
    accuracy, format rate, mean length) on synthetic or named data sets;
  * a compile counter and the console progress line.
"""

import contextlib
import json
import math
import pathlib
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from r1jax import checkpoint as ckpt_lib
from r1jax import parallel
from r1jax.model import config as model_config
from r1jax.stages import errors
from r1jax.stages import run_records
from r1jax.stages import tiny_base
from r1jax.tokenizer import Tokenizer, train_bpe

# =============================================================== config checks


def config_get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def check(config: ml_collections.ConfigDict,
          checks: Iterable[tuple[str, bool, str]]) -> None:
  """Raises ConfigError('config.<key>=<value> <why>') for the first failed check."""
  for key, ok, why in checks:
    if not ok:
      try:
        value = repr(config_get(config, key))
      except (KeyError, AttributeError):
        value = '<missing>'
      raise errors.ConfigError(f'config.{key}={value} {why}')


def check_known(config: ml_collections.ConfigDict, dotted: str,
                known: Sequence[str]) -> None:
  """Fails naming the key when config.<dotted> is not one of `known`."""
  value = config_get(config, dotted)
  if value not in known:
    raise errors.ConfigError(f'config.{dotted}={value!r} is not known; '
                             f'known: {sorted(known)}')


# ========================================================= model + tokenizer

# Fields compared between a named preset and a checkpoint's own config.
_ARCH_FIELDS = ('vocab_size', 'hidden_size', 'intermediate_size', 'num_layers',
                'num_heads', 'num_kv_heads', 'head_dim', 'tie_embeddings')


def check_architecture(preset: str, cfg, source: str,
                       overrides: dict | None = None) -> None:
  """A checkpoint must be the architecture its config names (when it names
  one: `preset` with `overrides` applied)."""
  if not preset:
    return
  want = model_config.get_config(preset, **dict(overrides or {}))
  diffs = [f'{f} {getattr(cfg, f)} (preset: {getattr(want, f)})'
           for f in _ARCH_FIELDS if getattr(cfg, f) != getattr(want, f)]
  if diffs:
    raise errors.ConfigError(
        f'{source} is not a {preset!r} checkpoint: {", ".join(diffs)}. Point '
        f"config.model.hf_path / gguf_path at a {preset} checkpoint, or set "
        "config.model.preset='' to take the checkpoint's own architecture.")


def load_model_and_tokenizer(config, workdir: pathlib.Path, mesh):
  """(ModelConfig, graphdef, sharded params, Tokenizer) for this run.

  Sources, in order: a Hugging Face directory (`model.hf_path`), a GGUF file
  (`model.gguf_path`), else a random init of `model.preset`. With a
  checkpoint, a non-empty `model.preset` names the architecture it must have.
  The tokenizer comes with the checkpoint, from `tokenizer.path`, or is
  trained on the synthetic corpus (`tokenizer.path='train'`) and kept in the
  workdir so that a resumed run uses the very same one.
  """
  mc = config.model
  overrides = dict(dtype=jnp.dtype(mc.dtype),
                   param_dtype=jnp.dtype(mc.param_dtype), remat=mc.remat)
  if mc.hf_path:
    from r1jax.model import hf  # pylint: disable=g-import-not-at-top
    hf_path = run_records.resolve_hf_path(mc.hf_path)
    config_file = pathlib.Path(hf_path) / 'config.json'
    if not config_file.is_file():
      raise errors.MissingFileError(
          f'config.model.hf_path={mc.hf_path!r}: no config.json there; '
          'point it at a Hugging Face model directory or at the workdir of a '
          'finished stage.')
    cfg = hf.config_from_hf(json.loads(config_file.read_text()), **overrides)
    check_architecture(mc.preset, cfg, hf_path, mc.overrides)
    graphdef, abstract = _abstract(cfg)  # with this run's dtypes and remat
    shardings = parallel.param_shardings(mesh, abstract)
    _, _, params = hf.load_pretrained(
        hf_path, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        shardings=shardings)
    tokenizer = Tokenizer.from_dir(config.tokenizer.path or hf_path)
    return cfg, graphdef, params, tokenizer
  if mc.gguf_path:
    from r1jax.model import gguf  # pylint: disable=g-import-not-at-top
    if not pathlib.Path(mc.gguf_path).is_file():
      raise errors.MissingFileError(
          f'config.model.gguf_path={mc.gguf_path!r} is not a file.')
    cfg, _, params = gguf.load_gguf(mc.gguf_path, dtype=overrides['dtype'],
                                    param_dtype=overrides['param_dtype'])
    cfg = cfg.replace(remat=mc.remat)
    check_architecture(mc.preset, cfg, mc.gguf_path, mc.overrides)
    graphdef, abstract = _abstract(cfg)
    params = parallel.shard_params(params, parallel.param_shardings(mesh, abstract))
    return cfg, graphdef, params, gguf.tokenizer_from_gguf(mc.gguf_path)

  tokenizer = _tokenizer_for_preset(config, workdir)
  cfg = model_config.get_config(mc.preset, **dict(mc.overrides), **overrides)
  if tokenizer.vocab_size > cfg.vocab_size:
    raise ValueError(
        f'tokenizer has {tokenizer.vocab_size} tokens but model preset '
        f'{mc.preset!r} has vocab_size={cfg.vocab_size}; set '
        'config.tokenizer.vocab_size <= the model vocabulary')
  graphdef, params = parallel.init_sharded(cfg, mesh, config.seed)
  return cfg, graphdef, params, tokenizer


def ensure_base_model(config, workdir: pathlib.Path, log) -> None:
  """Makes config.model.hf_path a complete, checked base model: the tiny base
  pretrained first when the config asks for it and the cache lacks it
  (r1jax/stages/tiny_base.py)."""
  tiny_base.ensure(config, workdir, log)


def _abstract(cfg):
  from r1jax.model import functional as fn  # pylint: disable=g-import-not-at-top
  return fn.abstract(cfg)


def _tokenizer_for_preset(config, workdir: pathlib.Path) -> Tokenizer:
  tc = config.tokenizer
  saved = workdir / 'tokenizer'
  if (saved / 'tokenizer.json').exists():
    return Tokenizer.from_dir(saved)
  if tc.path and tc.path != 'train':
    return Tokenizer.from_dir(tc.path)
  if config.data.source != 'synthetic_corpus':
    raise ValueError("config.tokenizer.path='train' needs "
                     "config.data.source='synthetic_corpus'")
  from r1jax.data import corpus  # pylint: disable=g-import-not-at-top
  texts = corpus.tokenizer_training_texts(
      corpus.CorpusConfig(**config.data.corpus.to_dict()), n_docs=tc.train_docs,
      seed=config.seed)
  tokenizer = train_bpe(texts, tc.vocab_size, config={
      'eos_token': '<|endoftext|>', 'pad_token': '<|pad|>',
      'chat_format': 'plain'})
  tokenizer.save(saved)
  return tokenizer


# ================================================================ optimizer


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


# =================================================================== resume


def restore_latest(checkpointer: ckpt_lib.Checkpointer, state, shardings,
                   extra: dict[str, Any] | None = None):
  """(state, extra, step) from the latest checkpoint, or the inputs and None.

  `extra` holds host-side values saved next to the arrays (the data
  iterator's state): their saved values replace the given ones.
  """
  latest = checkpointer.latest_step()
  extra = dict(extra or {})
  if latest is None:
    return state, extra, None
  target = {**ckpt_lib.abstract_like(state, shardings), **extra}
  restored = checkpointer.restore(latest, abstract_state=target)
  extra = {k: restored.pop(k) for k in extra}
  return restored, extra, latest


def open_run(workdir: pathlib.Path, keep_checkpoints: int):
  """(Checkpointer, MetricWriter) of a run in `workdir`, new or resumed.

  metrics.jsonl rows of steps after the latest complete checkpoint are
  dropped first (the resumed run writes them again), so the file reads as one
  uninterrupted run.
  """
  from r1jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  checkpointer = ckpt_lib.Checkpointer(workdir / 'checkpoints',
                                       max_to_keep=keep_checkpoints)
  latest = checkpointer.latest_step()
  drop_metrics_after(workdir, -1 if latest is None else latest)
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


def drop_metrics_after(workdir: pathlib.Path, step: int) -> int:
  """Removes metrics.jsonl rows of steps > `step` (a resume redoes them).

  Returns how many rows were dropped. The file is rewritten atomically.
  """
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  if not path.exists() or jax.process_index() != 0:
    return 0
  kept, dropped = [], 0
  for line in path.read_text(encoding='utf-8').splitlines():
    if not line.strip():
      continue
    try:
      row_step = int(json.loads(line).get('step', 0))
    except (ValueError, AttributeError):
      dropped += 1  # a line cut by a kill mid-write
      continue
    if row_step > step:
      dropped += 1
    else:
      kept.append(line)
  tmp = path.with_suffix('.jsonl.tmp')
  tmp.write_text(''.join(l + '\n' for l in kept), encoding='utf-8')
  tmp.replace(path)
  return dropped


# =============================================================== evaluation


def synthetic_train_records(dc: ml_collections.ConfigDict, seed: int
                            ) -> list[dict]:
  """data.num_train synthetic train problems over data.tasks (with their
  data.difficulty), asked in data.languages when it is set."""
  from r1jax.data import synthetic  # pylint: disable=g-import-not-at-top
  records = []
  per_task = max(1, dc.num_train // len(dc.tasks))
  for task in dc.tasks:
    records += synthetic.generate(task, per_task, seed=seed, split='train',
                                  **dc.difficulty.to_dict().get(task, {}))
  if dc.get('languages'):
    records = synthetic.localize(records, dc.languages.to_dict(), seed)
  return records


def eval_records(config, split_seed_offset: int = 0) -> list[dict]:
  """Held-out problems: synthetic test splits, or a named dataset."""
  ec = config.eval
  if ec.dataset in ('', 'synthetic'):
    from r1jax.data import synthetic  # pylint: disable=g-import-not-at-top
    tasks = list(ec.tasks)
    per_task = max(1, ec.num_problems // len(tasks))
    records = []
    corpus_difficulty = {}
    if 'corpus' in config.data:
      corpus_difficulty = config.data.corpus.difficulty.to_dict()
    elif 'difficulty' in config.data:
      corpus_difficulty = config.data.difficulty.to_dict()
    for task in tasks:
      knobs = ec.difficulty.to_dict().get(task, corpus_difficulty.get(task, {}))
      records += synthetic.generate(task, per_task, seed=ec.seed + split_seed_offset,
                                    split=ec.split, **knobs)
    languages = ec.get('languages') or config.data.get('languages')
    if languages:  # a mixed-language test set
      records = synthetic.localize(records, languages.to_dict(), ec.seed)
    return records
  from r1jax.data import builders  # pylint: disable=g-import-not-at-top
  local_dir = config.data.get('local_dir', '') or None
  records = builders.load_dataset(ec.dataset, ec.split, local_dir=local_dir)
  return [records[i] for i in range(min(ec.num_problems, len(records)))]


def evaluate_model(ec: ml_collections.ConfigDict, sampler, params, tokenizer,
                   records: Sequence[dict], *, accuracy_reward: str = '',
                   log: Callable[[str], None] = print) -> dict[str, Any]:
  """Held-out metrics of `params`, per task and over all records.

  Keys: pass@1 (over eval.num_samples samples at eval.temperature), pass@k
  for k in eval.ks, cons@<num_samples> (majority vote by answer
  equivalence), greedy_accuracy (temperature 0, when eval.greedy), format_rate
  (strict R1 format), language_consistency (share of chain-of-thought words
  in each problem's language), mean_length (tokens); '<task>/<key>' per task; and
  'samples', a few completions as text.
  """
  from r1jax import evaluate  # pylint: disable=g-import-not-at-top
  nproc = jax.process_count()
  if nproc > 1:  # each process scores its own equal share
    records = list(records)[:len(records) - len(records) % nproc]
    records = records[jax.process_index()::nproc]
  by_task: dict[str, list[dict]] = {}
  for r in records:
    by_task.setdefault(r.get('task') or ec.dataset, []).append(r)
  ks = tuple(ec.get('ks', ()))
  stats: dict[str, Any] = {'samples': []}
  weighted: dict[str, list[tuple[int, float]]] = {}
  for task, recs in by_task.items():
    reward = accuracy_reward or ec.get('reward', '') or None
    common_kw = dict(template=ec.template, max_new_tokens=ec.max_new_tokens,
                     accuracy_reward=reward, batch_size=ec.batch_size,
                     seed=ec.seed)
    s = evaluate.evaluate_problems(
        sampler, params, tokenizer, recs, num_samples=ec.num_samples,
        temperature=ec.temperature, top_p=ec.top_p, ks=ks, **common_kw)
    if ec.get('greedy', False):
      g = evaluate.evaluate_problems(sampler, params, tokenizer, recs,
                                     num_samples=1, temperature=0.0,
                                     top_p=1.0, **common_kw)
      s['greedy_accuracy'] = g['pass@1']
    for k, v in s.items():
      if isinstance(v, float):
        stats[f'{task}/{k}'] = v
        weighted.setdefault(k, []).append((len(recs), v))
    stats['samples'].extend(s['samples'][:2])
  for k, pairs in weighted.items():
    total = sum(n for n, _ in pairs)
    stats[k] = sum(n * v for n, v in pairs) / total
  if nproc > 1:  # equal shares: the global mean is the mean of the means
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    names = sorted(k for k, v in stats.items() if isinstance(v, float))
    local = np.asarray([stats[k] for k in names], np.float64)
    means = np.asarray(multihost_utils.process_allgather(local)).mean(axis=0)
    stats.update({k: float(v) for k, v in zip(names, means)})
  stats['num_problems'] = len(records) * nproc
  shown = [k for k in ('pass@1', f'cons@{ec.num_samples}', 'greedy_accuracy',
                       'format_rate', 'language_consistency', 'mean_length',
                       'reflection_rate', 'recheck_rate')
           if k in stats]
  log(f'held-out ({len(records)} problems x {ec.num_samples} samples, '
      f'template {ec.template!r}, temperature {ec.temperature}): ' +
      ' | '.join(f'{k} {stats[k]:.3f}' for k in shown))
  return stats


def float_metrics(stats: dict[str, Any]) -> dict[str, float]:
  return {k: v for k, v in stats.items() if isinstance(v, float)}


# ======================================================= compiles, progress


class CompileCounter:
  """Counts XLA backend compilations in this process (every program, jitted
  or eager), through jax.monitoring's compile-duration event."""

  _EVENT = '/jax/core/compile/backend_compile_duration'
  _count = 0
  _installed = False

  @classmethod
  def install(cls) -> None:
    if not cls._installed:
      def listener(event, duration_secs, **kwargs):
        del duration_secs, kwargs
        if event == cls._EVENT:
          cls._count += 1
      jax.monitoring.register_event_duration_secs_listener(listener)
      cls._installed = True

  @classmethod
  def count(cls) -> int:
    return cls._count


def progress_line(step: int, total: int, elapsed_s: float, steps_done: int,
                  metrics: dict[str, Any], keys: Sequence[tuple[str, str]],
                  width: int = 20) -> str:
  """'[#####.....]  12/200  6% ETA 3m20s | reward 0.53 | ...' for the console.

  `steps_done` steps took `elapsed_s` (this process); the ETA extrapolates.
  """
  frac = step / max(total, 1)
  bar = '#' * int(round(frac * width))
  eta = ''
  if steps_done:
    eta = ' ETA ' + format_seconds(elapsed_s / steps_done * (total - step))
  parts = [f'[{bar:<{width}}] {step}/{total} {100 * frac:3.0f}%{eta}']
  for label, key in keys:
    if key in metrics and metrics[key] is not None:
      x = float(metrics[key])
      if not math.isfinite(x):
        parts.append(f'{label} {x}')
      elif abs(x) >= 1000:
        parts.append(f'{label} {x:,.0f}')
      else:
        parts.append(f'{label} {x:.3g}')
  return ' | '.join(parts)


def format_seconds(s: float) -> str:
  s = int(max(s, 0))
  if s >= 3600:
    return f'{s // 3600}h{s % 3600 // 60:02d}m'
  if s >= 60:
    return f'{s // 60}m{s % 60:02d}s'
  return f'{s}s'


class Timer:
  """Accumulates wall time per named phase: `with timer('sample'): ...`."""

  def __init__(self):
    self.totals: dict[str, float] = {}

  def __call__(self, name: str):
    timer = self

    class _Span:
      def __enter__(self):
        self.t0 = time.perf_counter()

      def __exit__(self, *exc):
        timer.totals[name] = (timer.totals.get(name, 0.0) +
                              time.perf_counter() - self.t0)
    return _Span()

  def pop(self) -> dict[str, float]:
    out, self.totals = self.totals, {}
    return out

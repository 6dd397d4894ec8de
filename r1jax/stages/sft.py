r"""Supervised fine-tuning, distillation and tiny-model pretraining.

    python -m r1jax.train --config=experiments/pretrain_tiny.py --workdir=runs/tiny

Next-token loss over the tokens marked as targets (completions, or every token
for pretraining), packed or bucketed sequences, AdamW with warm-up and cosine
decay, gradient clipping and accumulation, periodic eval loss and sample
generations, orbax checkpoints with exact resume, metrics to TensorBoard and
JSONL. Data-parallel / fsdp through the mesh in `config.mesh`.

Token-level distillation (`config.distill`, off while distill.teacher=''):
a frozen teacher with the student's tokenizer (any size) is run on the same
batch inside the train step, and the loss becomes (1 - w) * NLL + w * KL,
the KL forward (teacher || student) or reverse, at a temperature, over the
same target tokens (r1jax/rl/distill.py). Metrics: loss, nll, distill/kl.
"""

import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from r1jax import base_ability
from r1jax import errors
from r1jax import evaluate
from r1jax import parallel
from r1jax.data import cold_start
from r1jax.data import corpus
from r1jax.data import batching
from r1jax.model import config as model_config
from r1jax.model import functional as fn
from r1jax.model import lora as lora_lib
from r1jax.rl import distill as distill_lib
from r1jax.run import adapters
from r1jax.run import checks
from r1jax.run import console
from r1jax.run import loading
from r1jax.run import problems
from r1jax.run import file_checks
from r1jax.run import records as run_records
from r1jax.run import train_state
from r1jax.sampling import FINISH_STOP
from r1jax.stages import distill_teacher
from r1jax.stages import sft_update

DATA_SOURCES = ('synthetic_corpus', 'jsonl', 'cold_start')


def validate_config(config: ml_collections.ConfigDict,
                    num_devices_batch: int = 1, process_count: int = 1) -> None:
  """Fails at start-up with a message that names the bad key.

  r1jax.train calls it before the mesh exists (one device, one process); the
  stage again with its mesh.
  """
  tc = config.train
  checks.check(config, [
      ('train.steps', tc.steps > 0, 'must be positive'),
      ('train.batch_size', tc.batch_size > 0, 'must be positive'),
      ('train.grad_accum', tc.grad_accum > 0 and tc.batch_size % tc.grad_accum == 0,
       f'must divide train.batch_size={tc.batch_size}'),
      ('train.lr', tc.lr > 0, 'must be positive'),
      ('train.warmup_steps', 0 <= tc.warmup_steps <= tc.steps,
       f'must be in [0, train.steps={tc.steps}]'),
      ('data.source', config.data.source in DATA_SOURCES,
       f'must be one of {DATA_SOURCES}'),
      ('data.seq_len', config.data.seq_len > 1, 'must be > 1'),
      ('model.preset', config.model.preset in model_config.PRESETS
       or bool(config.model.hf_path or config.model.gguf_path),
       f'unknown preset; known: {model_config.PRESETS.names()}'),
  ])
  ec = config.get('eval', ml_collections.ConfigDict())
  checks.check(config, [
      ('train.batch_size', tc.batch_size % num_devices_batch == 0,
       f'must be divisible by the mesh batch axes (data x fsdp = '
       f'{num_devices_batch} devices); change it or config.mesh'),
      ('train.batch_size', tc.batch_size % process_count == 0,
       f'must be divisible by the number of processes ({process_count})'),
      ('train.log_every', tc.log_every >= 1, 'must be >= 1'),
      ('train.eval_every', tc.eval_every >= 1, 'must be >= 1'),
      ('train.checkpoint_every', tc.checkpoint_every >= 1, 'must be >= 1'),
      ('train.keep_checkpoints', tc.keep_checkpoints >= 1, 'must be >= 1'),
      ('train.sample_every', tc.sample_every >= 0, 'must be >= 0 (0: never)'),
      ('train.min_lr_ratio', 0 <= tc.min_lr_ratio <= 1, 'must be in [0, 1]'),
      ('data.num_eval_docs', config.data.num_eval_docs >= 0, 'must be >= 0'),
      ('data.datasets', config.data.source != 'cold_start' or
       len(config.data.get('datasets', ())) > 0,
       "is empty: data.source='cold_start' needs at least one data set "
       "(e.g. ('synthetic',) or ('gsm8k',))"),
      ('eval.num_samples', ec.get('num_samples', 1) >= 1, 'must be >= 1'),
      ('eval.ks', all(1 <= k <= ec.get('num_samples', 1)
                      for k in ec.get('ks', ())),
       f'must be in [1, eval.num_samples={ec.get("num_samples", 1)}] (pass@k '
       'needs k samples per problem)'),
  ])
  mc = config.model
  if (config.tokenizer.path == 'train' and not (mc.hf_path or mc.gguf_path)
      and 'vocab_size' in config.tokenizer):
    vocab = model_config.get_config(mc.preset, **dict(mc.overrides)).vocab_size
    checks.check(config, [
        ('tokenizer.vocab_size', config.tokenizer.vocab_size <= vocab,
         f'is more than the model preset {mc.preset!r} has (vocab_size='
         f'{vocab}); lower it or raise config.model.overrides.vocab_size')])
  lora_lib.from_config(config.model)  # LoRA keys: refused naming the key
  if config.data.source == 'jsonl' and not config.data.path:
    raise errors.ConfigError("config.data.path must name a JSONL file when "
                     "config.data.source='jsonl'")
  if 'distill' in config:
    dc = distill_teacher.distill_config(config)
    is_num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
    checks.check(config, [
        ('distill.teacher', isinstance(dc.teacher, str),
         "must be a path (a checkpoint), or '' for none"),
        ('distill.kind', dc.kind in distill_lib.DISTILL_DIVERGENCES,
         f'must be one of {distill_lib.DISTILL_DIVERGENCES.names()}'),
        ('distill.weight', is_num(dc.weight) and 0 <= dc.weight <= 1,
         'must be in [0, 1]'),
        ('distill.temperature', is_num(dc.temperature) and dc.temperature > 0,
         'must be positive'),
    ])


def read_jsonl_examples(path: str) -> list[dict[str, str]]:
  """prompt / completion pairs; a bad line raises naming file and line."""
  out = []
  # The data builders' reader names file:line for bad JSON.
  from r1jax.data.builders import raw  # pylint: disable=g-import-not-at-top
  for lineno, row in raw.read_jsonl(path):
    if 'completion' not in row:
      raise errors.DataFormatError(
          f"{path}:{lineno}: expected an object with a 'completion' field "
          "(and optionally 'prompt')")
    out.append({'prompt': str(row.get('prompt', '')),
                'completion': str(row['completion'])})
  if not out:
    raise errors.DataFormatError(f'{path}: no examples')
  return out


def build_examples(config, tokenizer) -> tuple[list[dict], list[dict]]:
  """Train and eval lists of {'prompt', 'completion'} for the SFT batcher."""
  dc = config.data
  if dc.source == 'synthetic_corpus':
    ccfg = corpus.CorpusConfig(**dc.corpus.to_dict())
    train = corpus.corpus_documents(ccfg, n_docs=dc.num_docs, seed=config.seed)
    evals = corpus.corpus_documents(ccfg, n_docs=dc.num_eval_docs,
                                    seed=config.seed + 10_000)
    as_ex = lambda docs: [{'prompt': '', 'completion': d} for d in docs]
    return as_ex(train), as_ex(evals)
  if dc.source == 'jsonl':
    # A JSONL file, or a finished rejection-sampling workdir's sft.jsonl.
    examples = read_jsonl_examples(str(file_checks.sft_jsonl(dc.path)))
    n_eval = min(dc.num_eval_docs, len(examples) // 10)
    return examples[n_eval:], examples[:n_eval]
  # cold_start: readable <think> traces from reference solutions.
  from r1jax.data import builders  # pylint: disable=g-import-not-at-top
  examples = []
  for name in dc.datasets:
    if name == 'synthetic':  # the tiny models' tasks, in data.languages
      examples += cold_start.synthetic_examples(
          problems.synthetic_train_records(dc, config.seed), dc.template,
          p_mixed=dc.get('p_mixed', 0.0), seed=config.seed,
          restate=dc.get('restate', False),
          connectives=dc.get('connectives', True))
      continue
    records = builders.load_dataset(name, 'train', local_dir=dc.local_dir or None)
    examples += cold_start.cold_start_examples(records, source=name,
                                               template=dc.template)
  n_eval = min(dc.num_eval_docs, len(examples) // 10)
  return examples[n_eval:], examples[:n_eval]


# ================================================================== training


def _sample_texts(config, sampler, params, tokenizer, examples,
                  num: int = 4) -> list[str]:
  """Greedy continuations of a few held-out prompts (a document's question
  part when there is no prompt), rendered as 'prompt => completion'."""
  prompts = [ex['prompt'] or _document_prompt(ex['completion'])
             for ex in examples[:num]]
  ids = [tokenizer.encode(p) for p in prompts]
  out = sampler.generate(params, ids, max_new_tokens=config.train.sample_tokens,
                         temperature=0.0, seed=0)
  texts = tokenizer.decode_completions(
      np.asarray(out.tokens), np.asarray(out.lengths),
      np.asarray(out.finish_reason) == FINISH_STOP)
  return [f'{p} => {t}' for p, t in zip(prompts, texts)]


_CONSOLE = (('loss', 'loss'), ('nll', 'nll'), ('kl', 'distill/kl'),
            ('grad_norm', 'grad_norm'), ('tokens/s', 'tokens_per_s'))
_SAMPLE_BUCKETS = (32, 64, 128, 256, 512, 1024)  # prompt widths of the sampler
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


def _check_ability(config, sampler, params, tokenizer):
  """(figures, failures) of the base-model ability check (config.ability)."""
  ab = config.ability
  held_out = ml_collections.ConfigDict(
      {'eval': config.eval.to_dict(), 'data': config.data.to_dict()})
  held_out.eval.num_problems = ab.num_problems
  if 'few_shot' in held_out.eval:  # the ability check asks zero-shot
    held_out.eval.few_shot = 0
  records = problems.eval_records(held_out)
  figures = base_ability.measure(
      sampler, params, tokenizer, records, template=ab.template,
      num_samples=ab.num_samples, temperature=ab.temperature,
      max_new_tokens=ab.max_new_tokens, batch_size=config.eval.batch_size,
      seed=config.eval.seed, accuracy_reward=ab.reward or None)
  return figures, base_ability.check(figures, ab.requirements.to_dict())


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Runs (or resumes) SFT in `workdir`; returns the final metrics."""
  validate_config(config)
  t_start = time.perf_counter()
  workdir = pathlib.Path(workdir)
  checkpointer, writer = train_state.open_run(workdir, config.train.keep_checkpoints)
  run_records.write_run_config(config, workdir)
  tc = config.train
  mesh = parallel.make_mesh(dict(config.mesh))
  validate_config(config, parallel.batch_size_divisor(mesh), jax.process_count())

  # ------------------------------------------------------ model & tokenizer
  model_cfg, graphdef, params, tokenizer = loading.load_model_and_tokenizer(
      config, workdir, mesh)
  writer.log(f'model: {model_cfg.num_layers} layers, '
             f'{fn.count_params(params):,} params; vocab {tokenizer.vocab_size}')
  # With config.model.lora: the adapters are trained, the base is frozen.
  w = adapters.attach(config, model_cfg, graphdef, params, mesh, writer.log)
  graphdef, params = w.graphdef, w.params
  # One sampler for the logged samples, the ability checks and the final
  # held-out evaluation: its programs compile once.
  sampler = loading.make_sampler(graphdef, model_cfg, tokenizer, mesh,
                                 _SAMPLE_BUCKETS)
  teacher = distill_teacher.load_teacher(config, mesh, tokenizer, writer.log)

  # ------------------------------------------------------------------ data
  train_examples, eval_examples = build_examples(config, tokenizer)
  batcher_kw = dict(
      batch_size=tc.batch_size, seq_len=config.data.seq_len,
      pack=config.data.pack, loss_on_prompt=config.data.loss_on_prompt,
      process_index=jax.process_index(), process_count=jax.process_count())
  train_iter = batching.SFTBatcher(train_examples, tokenizer, seed=config.seed,
                                   **batcher_kw)
  eval_batches = []
  if eval_examples:
    eval_iter = batching.SFTBatcher(eval_examples, tokenizer, seed=1,
                                    shuffle=False, repeat=False,
                                    drop_remainder=False, **batcher_kw)
    for b in eval_iter:
      eval_batches.append(b)
      if len(eval_batches) >= tc.eval_batches:
        break

  # ------------------------------------------------------------ train state
  ability = config.get('ability')
  optimizer = train_state.make_optimizer(
      tc, ability if ability and ability.check else None)
  state, shardings = train_state.init_train_state(params, optimizer, config.seed,
                                             mesh)
  adapters.check_resume(checkpointer, w)
  state, extra, latest = train_state.restore_latest(
      checkpointer, state, shardings, {'data_state': train_iter.get_state()})
  if latest is not None:
    train_iter.set_state(extra['data_state'])
    writer.log(f'resumed from step {latest}')
  start_step = int(state['step'])

  # Each host feeds its own rows; they form one global batch over the mesh.
  to_device = lambda b: parallel.host_local_to_global(
      {k: np.asarray(v) for k, v in b.items()}, mesh)
  eval_batches = [to_device(b) for b in eval_batches]
  train_step = sft_update.make_train_step(
      graphdef, optimizer, tc.grad_accum, teacher, frozen=w.frozen,
      lora_dropout=w.dropout)
  eval_step = sft_update.make_eval_step(graphdef, w.frozen)

  # ------------------------------------------------------------------- loop
  history = []
  t_last, tokens_since = time.perf_counter(), 0.0
  t_loop = t_last
  step = start_step
  final: dict[str, Any] = {}
  # The base-model ability check (config.ability, the tiny base's
  # pretraining): pretraining goes on, within ability.max_steps, until the
  # base has what R1-Zero needs (r1jax/base_ability.py).
  check_ability = bool(ability and ability.check)
  target = tc.steps
  while True:
    with train_state.saves_finish_on_error(checkpointer):
      while step < target:
        host_batch = next(train_iter)
        tokens_since += float((np.asarray(host_batch['segment_ids']) > 0).sum())
        state, m = train_step(state, to_device(host_batch))
        step += 1
        if step % tc.log_every == 0 or step == target:
          m = jax.device_get(m)
          loss = float(m['loss'])
          if not np.isfinite(loss):
            raise FloatingPointError(f'non-finite loss {loss} at step {step}')
          dt = time.perf_counter() - t_last
          m = {k: float(v) for k, v in m.items()}
          m['tokens_per_s'] = tokens_since / max(dt, 1e-9)
          t_last, tokens_since = time.perf_counter(), 0.0
          writer.write(step, m, prefix='train/')
          writer.log(console.progress_line(
              step, target, time.perf_counter() - t_loop, step - start_step,
              m, _CONSOLE))
          history.append((step, loss))
          final['train_loss'] = loss
          if teacher is not None:
            final['train_nll'] = m['nll']
            final['distill_kl'] = m['distill/kl']
        if eval_batches and (step % tc.eval_every == 0 or step == target):
          eval_loss = _eval_loss(eval_step, state['params'], eval_batches)
          writer.write(step, {'loss': eval_loss}, prefix='eval/')
          writer.log(f'step {step}: eval loss {eval_loss:.4f}')
          final['eval_loss'] = eval_loss
        if (tc.sample_every and eval_examples and
            (step % tc.sample_every == 0 or step == target)):
          texts = _sample_texts(config, sampler, w.full(state['params']),
                                tokenizer, eval_examples)
          writer.write_texts(step, 'samples', texts)
          writer.log(f'step {step}: sample {texts[0]!r}')
        if step % tc.checkpoint_every == 0 or step == target:
          checkpointer.save(step,
                            {**state, 'data_state': train_iter.get_state()},
                            metadata=w.metadata())
    checkpointer.wait()
    if not check_ability:
      break
    figures, failures = _check_ability(config, sampler,
                                       w.full(state['params']), tokenizer)
    writer.write(step, figures, prefix='ability/')
    writer.log(f'step {step}: base ability: {base_ability.describe(figures)}')
    if not failures:
      writer.log(f'step {step}: base ability check passed')
      break
    writer.log(f'step {step}: base ability check failed: '
               + '; '.join(failures))
    if step + ability.extend_steps > ability.max_steps:
      writer.log(f'step {step}: the pretraining budget (ability.max_steps='
                 f'{ability.max_steps}) is spent; the base is exported with '
                 'the failed check recorded, and R1-Zero will refuse it')
      break
    target = step + ability.extend_steps
    writer.log(f'step {step}: pretraining on to step {target} (budget '
               f'{ability.max_steps})')
  final['history'] = history
  if check_ability:
    final['ability'] = figures
    final['ability_failures'] = failures

  # ------------------------------------------------------------ end of run
  out_dir = run_records.export_dir(config, workdir)
  if config.export.get('hf', True):  # all processes: gathered, 0 writes
    # The ability record goes in with the weights: the export appears
    # complete in one rename, or not at all (r1jax/atomic.py).
    extra = {base_ability.ABILITY_FILE: base_ability.record_text(
        figures, ability.requirements.to_dict(), failures,
        made_by=dict(base_ability.made_by(config), steps=step))
             } if check_ability else None
    adapters.export(out_dir, model_cfg, w, state['params'], tokenizer,
                    workdir, base_name=config.model.get('hf_path', ''),
                    extra_files=extra, log=writer.log)
  tokenizer.save(workdir / 'tokenizer')
  if config.eval.num_problems > 0:
    stats = evaluate.evaluate_config(config.eval, sampler,
                                     w.full(state['params']),
                                     tokenizer, problems.eval_records(config),
                                     log=writer.log)
    writer.write(step, evaluate.summarize(stats), prefix='eval/')
    writer.write_texts(step, 'eval/samples', stats['samples'])
    final.update({f'eval/{k}': v
                  for k, v in evaluate.summarize(stats).items()})
  final['wall_time_s'] = time.perf_counter() - t_start
  final['step'] = step
  run_records.mark_done(workdir, final)
  writer.log(f'done in {final["wall_time_s"]:.0f} s')
  checkpointer.close()
  writer.close()
  return final

r"""GRPO: R1-Zero's reinforcement learning from rule-based rewards.

    python -m r1jax.train --config=experiments/zero.py --workdir=runs/zero

One step, top to bottom (`grpo_rollout.Rollout`, a `HostRollout`; then
`grpo_update.make_batch`, a `Batch`; then `train_and_evaluate`'s loop):
  prompts   P prompts from the resumable PromptBatcher (this host's shard)
  sample    G completions each with `sampling.Sampler`; its log-probs are the
            old-policy values (no second forward pass for them)
  reward    `rewards.compute_rewards` on the host (math-verify pool, sandbox)
  (DAPO)    with rl.dynamic_sampling, groups of equal rewards are dropped and
            more prompts sampled until P informative groups are in
  reference log-probs of the frozen reference tree (skipped when beta = 0;
            replaced by the policy every rl.ref_reset_every steps)
  advantage `rl.compute_advantages` over the global batch, in one place
            (`grpo_update.rollout_advantages`)
  update    rl.num_iterations x rl.num_minibatches optimizer steps of
            `rl.grpo_loss`, gradients accumulated over rl.grad_accum
            micro-batches (`grpo_update.make_update_fn`)
  log, eval, checkpoint

Everything on the device is jitted and sharded over config.mesh; shapes are
fixed (prompt width sampling.max_prompt_tokens, completion budget
sampling.max_new_tokens), so after the first step nothing compiles again.
A checkpoint holds params, optimizer state, reference params, the RNG, the
data position and the step: a run killed at any moment continues, from its
last checkpoint, exactly as if it had not been.

With config.model.lora (r1jax/run/adapters.py) the params, their optimizer
state and the checkpoints are the adapters'; the base is frozen and the
reference is the base with the adapters switched off (zero adapters; after
a reference reset, a copy of the adapters), never a second copy of the base.
"""

import dataclasses
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from r1jax import memory
from r1jax import parallel
from r1jax import rewards as rewards_lib
from r1jax import rl
from r1jax.data import batching
from r1jax.model import config as model_config
from r1jax.model import functional as fn
from r1jax.model import lora as lora_lib
from r1jax import errors
from r1jax import evaluate
from r1jax.run import adapters
from r1jax.run import checks
from r1jax.run import console
from r1jax.run import loading
from r1jax.run import problems
from r1jax.run import train_state
from r1jax.stages import grpo_lengths
from r1jax.stages import grpo_rollout
from r1jax.stages import grpo_update
from r1jax.run import records as run_records

# =============================================================== config checks

# rl.LossConfig fields set by rl.* keys of the same name; the others come
# from rl.loss_options.
_RL_LOSS_FIELDS = ('policy_loss', 'aggregation', 'kl_estimator', 'beta',
                   'epsilon_low', 'epsilon_high', 'dual_clip')
LOSS_OPTIONS = tuple(f.name for f in dataclasses.fields(rl.LossConfig)
                     if f.name not in _RL_LOSS_FIELDS)


def loss_config(rc: ml_collections.ConfigDict) -> rl.LossConfig:
  """The loss of config.rl: its rl.* fields, then rl.loss_options. With
  rl.kl_in_reward the KL is in the reward (`grpo_update.make_batch`), so
  the loss's beta is 0 (it still reports the KL)."""
  no_kl = rc.beta == 0 or rc.get('kl_in_reward', False)
  return rl.LossConfig(
      policy_loss=rc.policy_loss, aggregation=rc.aggregation,
      kl_estimator=rc.kl_estimator,
      beta=0 if no_kl else float(rc.beta),  # the Python 0: no KL term
      epsilon_low=float(rc.epsilon_low), epsilon_high=float(rc.epsilon_high),
      dual_clip=float(rc.dual_clip) if rc.dual_clip else None,
      **rc.loss_options.to_dict())


def validate_config(config: ml_collections.ConfigDict,
                    num_devices_batch: int = 1, process_count: int = 1) -> None:
  """Fails at start-up, before any compile, with one line naming the key.

  r1jax.train calls it before the mesh exists (one device, one process); the
  stage again with its mesh.
  """
  rc, sc, tc = config.rl, config.sampling, config.train
  g, p = rc.group_size, rc.prompts_per_step
  lora_lib.from_config(config.model)  # LoRA keys: refused naming the key
  rows = p * g
  per_device = rows // max(num_devices_batch, 1)
  checks.check_known(config, 'rl.advantage', rl.ADVANTAGES.names())
  checks.check_known(config, 'rl.policy_loss', rl.POLICY_LOSSES.names())
  checks.check_known(config, 'rl.aggregation', rl.LOSS_AGGREGATIONS.names())
  checks.check_known(config, 'rl.kl_estimator', rl.KL_ESTIMATORS.names())
  grpo_lengths.check_config(config, process_count)
  for name in config.rewards.weights:
    if name not in rewards_lib.REWARDS:
      raise errors.ConfigError(
          f'config.rewards.weights has {name!r}, which is not a known reward; '
          f'known: {rewards_lib.REWARDS.names()}')
  for name in config.rewards.options:
    if name not in config.rewards.weights:
      raise errors.ConfigError(
          f'config.rewards.options has {name!r} but config.rewards.weights '
          'does not; give it a weight (0 to only log it) or drop the options')
  if config.rewards.accuracy and config.rewards.accuracy not in rewards_lib.REWARDS:
    raise errors.ConfigError(
        f'config.rewards.accuracy={config.rewards.accuracy!r} is not a known '
        f'reward; known: {rewards_lib.REWARDS.names()}')
  for name in rc.loss_options:
    if name not in LOSS_OPTIONS:
      raise errors.ConfigError(
          f'config.rl.loss_options.{name} is not a grpo_loss option the config '
          f'may set; known: {sorted(LOSS_OPTIONS)}')
  takes = rl.ADVANTAGES.options(rc.advantage)
  for name in rc.advantage_options:
    if name not in takes:
      raise errors.ConfigError(
          f'config.rl.advantage_options.{name}: the {rc.advantage!r} '
          f'advantage takes no such option; it takes {list(takes)}')
  gdpo = rc.get('multi_reward', 'sum_then_norm') == 'norm_then_sum'
  checks.check(config, [
      ('rl.group_size', g >= 1, 'must be >= 1'),
      ('rl.group_size', not (g == 1 and rc.advantage in ('grpo', 'rloo')),
       f'is 1: the {rc.advantage!r} advantage needs a group of >= 2 samples '
       'per prompt (a group of one has no spread); raise rl.group_size'),
      ('rl.prompts_per_step', p >= 1, 'must be >= 1'),
      ('rl.prompts_per_step', p % process_count == 0,
       f'must be divisible by the number of processes ({process_count})'),
      ('rl.prompts_per_step', p % num_devices_batch == 0,
       f'must be divisible by the mesh batch axes (data x fsdp = '
       f'{num_devices_batch} devices); change it or config.mesh'),
      ('rl.num_minibatches', rc.num_minibatches >= 1 and
       rows % (num_devices_batch * rc.num_minibatches) == 0,
       f'must divide the {rows} rollout rows per step evenly over '
       f'{num_devices_batch} devices (prompts_per_step x group_size / devices '
       'must be a multiple of it)'),
      ('rl.grad_accum', rc.grad_accum >= 1 and
       per_device % (rc.num_minibatches * rc.grad_accum) == 0,
       f'must divide the {per_device // max(rc.num_minibatches, 1)} rows per '
       'device of a mini-batch'),
      ('rl.num_iterations', rc.num_iterations >= 1, 'must be >= 1'),
      ('rl.beta', rc.beta >= 0, 'must be >= 0'),
      ('rl.kl_in_reward', isinstance(rc.get('kl_in_reward', False), bool),
       'must be True or False'),
      ('rl.kl_in_reward', not rc.get('kl_in_reward', False) or rc.beta > 0,
       'needs rl.beta > 0, its coefficient'),
      ('rl.multi_reward', rc.get('multi_reward', 'sum_then_norm') in
       rl.MULTI_REWARD_NORMALIZE,
       f'must be one of {rl.MULTI_REWARD_NORMALIZE}'),
      ('rl.multi_reward', not gdpo or
       'baseline_P' not in rl.ADVANTAGES.inputs(rc.advantage),
       f'normalises each reward on its own; the {rc.advantage!r} advantage '
       'needs one baseline of the total reward'),
      ('rl.multi_reward', not gdpo or not rc.get('kl_in_reward', False),
       'normalises each reward on its own: there is no total reward for '
       'rl.kl_in_reward to penalise'),
      ('rl.ref_reset_every', rc.ref_reset_every >= 0, 'must be >= 0 (0: never)'),
      ('rl.max_sampling_rounds', rc.max_sampling_rounds >= 1, 'must be >= 1'),
      ('sampling.max_new_tokens', sc.max_new_tokens >= 2, 'must be >= 2'),
      ('sampling.temperature', sc.temperature > 0,
       'must be > 0 for RL (greedy samples of a group are all the same)'),
      ('train.steps', tc.steps >= 1, 'must be >= 1'),
      ('train.lr', tc.lr > 0, 'must be > 0'),
      ('train.checkpoint_every', tc.checkpoint_every >= 1, 'must be >= 1'),
      ('train.log_every', tc.log_every >= 1, 'must be >= 1'),
      ('train.keep_checkpoints', tc.keep_checkpoints >= 1, 'must be >= 1'),
      ('train.warmup_steps', tc.warmup_steps >= 0, 'must be >= 0'),
      ('rl.epsilon_low', rc.epsilon_low >= 0, 'must be >= 0'),
      ('rl.epsilon_high', rc.epsilon_high >= 0, 'must be >= 0'),
      ('rl.dual_clip', rc.dual_clip == 0 or rc.dual_clip > 1,
       'must be 0 (off) or > 1'),
      ('sampling.top_p', 0 < sc.top_p <= 1, 'must be in (0, 1]'),
      ('sampling.top_k', sc.top_k >= 0, 'must be >= 0 (0: off)'),
      ('sampling.logprobs_nucleus',
       isinstance(sc.get('logprobs_nucleus', False), bool),
       'must be True or False'),
      ('sampling.max_prompt_tokens', sc.max_prompt_tokens >= 1, 'must be >= 1'),
      ('sampling.decode_segments', sc.decode_segments >= 1, 'must be >= 1'),
      ('eval.every', config.eval.every >= 0, 'must be >= 0 (0: only at the end)'),
      ('eval.num_samples', config.eval.num_samples >= 1, 'must be >= 1'),
      ('eval.ks', all(1 <= k <= config.eval.num_samples
                      for k in config.eval.get('ks', ())),
       f'must be in [1, eval.num_samples={config.eval.num_samples}] (pass@k '
       'needs k samples per problem)'),
      ('model.preset', not config.model.preset or
       config.model.preset in model_config.PRESETS,
       f'unknown preset; known: {model_config.PRESETS.names()}'),
      ('data.source', config.data.source == 'synthetic' or
       config.data.source in problems.dataset_names(),
       f"must be 'synthetic' or a dataset in {problems.dataset_names()}"),
  ])


# ===================================================================== data


def make_batcher(config, tokenizer, records) -> batching.PromptBatcher:
  rc = config.rl
  try:
    return batching.PromptBatcher(
        records, tokenizer, template=config.data.template,
        batch_size=rc.prompts_per_step // jax.process_count(),
        buckets=(config.sampling.max_prompt_tokens,), seed=config.seed,
        pad_to_max_bucket=True, drop_long=config.data.drop_long_prompts,
        process_index=jax.process_index(),
        process_count=jax.process_count())
  except ValueError as e:
    raise errors.ConfigError(
        f'config.sampling.max_prompt_tokens={config.sampling.max_prompt_tokens}'
        f': {e} (raise it, or set config.data.drop_long_prompts=True)') from None


# =================================================================== train


_CONSOLE = (('reward', 'reward'), ('acc', 'accuracy'), ('fmt', 'format'),
            ('len', 'response_length_mean'), ('kl', 'kl'),
            ('ent', 'entropy'), ('s/step', 'time/step'))


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Runs (or resumes) GRPO in `workdir`; returns the final metrics."""
  t_start = time.perf_counter()
  workdir = pathlib.Path(workdir)
  rc, tc = config.rl, config.train
  parallel.initialize_distributed(
      config.distributed.coordinator_address or None,
      config.distributed.num_processes or None,
      config.distributed.process_id if config.distributed.num_processes else None)
  mesh = parallel.make_mesh(dict(config.mesh))
  validate_config(config, parallel.batch_size_divisor(mesh),
                  jax.process_count())
  console.CompileCounter.install()
  say = print if jax.process_index() == 0 else (lambda *_: None)
  checkpointer, writer = train_state.open_run(workdir, tc.keep_checkpoints)
  run_records.write_run_config(config, workdir)
  # Before any weights load or compile: print the memory estimate, fail if
  # it cannot fit the device (r1jax/memory.py).
  memory.check_grpo(config, loading.model_config_of(config), mesh, writer.log)

  # ------------------------------------------------------ model & tokenizer
  model_cfg, graphdef, params, tokenizer = loading.load_model_and_tokenizer(
      config, workdir, mesh)
  writer.log(f'stage grpo: {model_cfg.num_layers} layers, '
             f'{fn.count_params(params):,} params, vocab '
             f'{tokenizer.vocab_size}; {jax.device_count()} devices, mesh '
             f'{dict(mesh.shape)}')
  # With config.model.lora: the adapters are trained, the base is frozen.
  w = adapters.attach(config, model_cfg, graphdef, params, mesh, writer.log)
  graphdef, params = w.graphdef, w.params

  # ------------------------------------------------------------------ data
  batcher = make_batcher(config, tokenizer, problems.train_records(config))
  eval_recs = problems.eval_records(config) if config.eval.num_problems else []
  sampler = loading.make_sampler(
      graphdef, model_cfg, tokenizer, mesh,
      (config.sampling.max_prompt_tokens,),
      decode_segments=config.sampling.decode_segments)
  problems.check_prompt_lengths(eval_recs, config.eval.template, tokenizer,
                                config.sampling.max_prompt_tokens,
                                'eval prompt')

  # ------------------------------------------------------------ train state
  updates_per_step = rc.num_iterations * rc.num_minibatches
  opt_cfg = ml_collections.ConfigDict(tc.to_dict())
  opt_cfg.steps = tc.steps * updates_per_step
  opt_cfg.warmup_steps = tc.warmup_steps * updates_per_step
  optimizer = train_state.make_optimizer(opt_cfg)
  state, shardings = train_state.init_train_state(params, optimizer, config.seed,
                                             mesh)
  use_ref = rc.beta > 0
  ref_params = w.reference(state['params']) if use_ref else None
  ckpt_state = lambda: ({**state, 'ref_params': ref_params} if use_ref
                        else dict(state))
  ckpt_shardings = ({**shardings, 'ref_params': shardings['params']}
                    if use_ref else shardings)
  adapters.check_resume(checkpointer, w)
  restored, extra, latest = train_state.restore_latest(
      checkpointer, ckpt_state(), ckpt_shardings,
      {'data_state': batcher.get_state()})
  if latest is not None:
    ref_params = restored.pop('ref_params', None)
    state = restored
    batcher.set_state(extra['data_state'])
    writer.log(f'resumed from step {latest}')
  start_step = int(state['step'])
  # A host copy: state's buffers are donated to the update.
  base_key = jax.random.wrap_key_data(np.asarray(jax.device_get(state['rng'])))

  loss = loss_config(rc)
  # A rollout correction weighs by pi_old / pi_sampler: pi_old is then the
  # trainer's own pass over the rollout, before the update.
  recompute_old_logp = loss.rollout_correction is not None
  scoring = grpo_update.Scoring.from_config(config.sampling)
  if rc.get('length_buckets', 0):  # over the tokens that exist
    lengths = grpo_lengths.LengthAware(
        graphdef, optimizer, loss_config=loss, num_iterations=rc.num_iterations,
        num_minibatches=rc.num_minibatches, grad_accum=rc.grad_accum,
        mesh=mesh, buckets=rc.length_buckets,
        prompt_len=config.sampling.max_prompt_tokens,
        completion_len=config.sampling.max_new_tokens, scoring=scoring,
        group_size=rc.group_size)
    update_fn, logprobs_fn = lengths.update, lengths.logprobs
  else:
    update_fn = grpo_update.make_update_fn(
        graphdef, optimizer, loss_config=loss,
        num_iterations=rc.num_iterations, num_minibatches=rc.num_minibatches,
        grad_accum=rc.grad_accum, mesh=mesh, scoring=scoring,
        frozen=w.frozen, lora_dropout=w.dropout, group_size=rc.group_size)
    # In the update's micro-batches: never more logits at once than an update.
    logprobs_fn = grpo_update.make_logprobs_fn(
        graphdef, mesh, num_chunks=rc.num_minibatches * rc.grad_accum,
        scoring=scoring, group_size=rc.group_size)
  rollout = grpo_rollout.Rollout(config, sampler, tokenizer, batcher)
  timer = console.Timer()
  final: dict[str, Any] = {}

  def run_eval(step: int) -> None:
    if not eval_recs:
      return
    t0 = time.perf_counter()
    stats = evaluate.evaluate_config(
        config.eval, sampler, w.full(state['params']), tokenizer, eval_recs,
        accuracy_reward=config.eval.reward or config.rewards.accuracy,
        log=lambda s: writer.log(f'step {step}: {s}'))
    writer.write(step, evaluate.summarize(stats), prefix='eval/')
    writer.write_texts(step, 'eval/samples', stats['samples'])
    for text in stats['samples'][:config.eval.num_texts]:
      writer.log(f'  sample: {text!r}')
    final.update({f'eval/{k}': v for k, v in evaluate.summarize(stats).items()})
    if step == 0:
      final.update({f'base/{k}': v
                    for k, v in evaluate.summarize(stats).items()})
    writer.write(step, {'eval': time.perf_counter() - t0}, prefix='time/')

  if start_step == 0 and config.eval.at_start:
    run_eval(0)

  # ------------------------------------------------------------------- loop
  step = start_step
  t_loop = time.perf_counter()
  with train_state.saves_finish_on_error(checkpointer):
    while step < tc.steps:
      t_step = time.perf_counter()
      key = jax.random.fold_in(base_key, step)
      policy = w.full(state['params'])   # with LoRA: adapters on the base
      host = rollout(policy, key, timer)                    # sample + reward
      batch, batch_metrics = grpo_update.make_batch(        # ref, advantages
          host, config, mesh, logprobs_fn=logprobs_fn, timer=timer,
          ref_params=None if ref_params is None else w.full(ref_params),
          old_params=policy if recompute_old_logp else None)
      with timer('update'):
        state, m = update_fn(state, batch)
        m = {k: float(v) for k, v in jax.device_get(m).items()}
      m.update({k: float(v) for k, v in jax.device_get(batch_metrics).items()})
      step += 1
      if not m.pop('loss_finite') or not np.isfinite(m['loss']):
        checkpointer.wait()
        raise FloatingPointError(
            f'step {step}: non-finite loss ({m["loss"]}) or gradient norm '
            f'({m["grad_norm"]}); stopping. The last checkpoint '
            f'(step {checkpointer.latest_step()}) is left as it was.')
      if use_ref and rc.ref_reset_every and step % rc.ref_reset_every == 0:
        ref_params = grpo_update.copy_tree(state['params'])
        writer.log(f'step {step}: reference reset to the current policy')

      # ------------------------------------------------------------ metrics
      m.update(grpo_rollout.rollout_metrics(host, config))
      times = timer.pop()
      times['step'] = time.perf_counter() - t_step
      tokens = float(host.sample.prompt_mask.sum() + host.sample.lengths.sum())
      m['tokens_per_s'] = tokens * jax.process_count() / times['step']
      m['tokens_per_s_per_device'] = m['tokens_per_s'] / jax.device_count()
      m['compiles'] = float(console.CompileCounter.count())
      writer.write(step, m, prefix='train/')
      writer.write(step, times, prefix='time/')
      m.update({f'time/{k}': v for k, v in times.items()})
      if step % tc.log_every == 0 or step == tc.steps:
        writer.log(console.progress_line(
            step, tc.steps, time.perf_counter() - t_loop, step - start_step, m,
            _CONSOLE))
        run_records.append_completions(
            workdir, step, grpo_rollout.completion_records(host, config))
      final.update({f'train/{k}': v for k, v in m.items()})

      if (config.eval.every and step % config.eval.every == 0) or step == tc.steps:
        run_eval(step)
      if step % tc.checkpoint_every == 0 or step == tc.steps:
        checkpointer.save(step, {**ckpt_state(),
                                 'data_state': batcher.get_state()},
                          metadata=w.metadata())
  checkpointer.wait()
  if start_step >= tc.steps:
    writer.log(f'run already complete at step {start_step}')
  out_dir = run_records.export_dir(config, workdir)
  if config.export.hf:  # every process: params are gathered, process 0 writes
    adapters.export(out_dir, model_cfg, w, state['params'], tokenizer, workdir,
                    base_name=config.model.hf_path, log=writer.log)
  final['wall_time_s'] = time.perf_counter() - t_start
  final['compiles'] = console.CompileCounter.count()
  final['step'] = step
  run_records.mark_done(workdir, final)
  writer.log(f'done in {console.format_seconds(final["wall_time_s"])}')
  checkpointer.close()
  writer.close()
  rewards_lib.shutdown_pool()
  return final

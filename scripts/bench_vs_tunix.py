"""One GRPO step, r1jax against Google's tunix (GRPOLearner), same weights and work, CPU.

The work is bench_vs_trl.py's (bench_common's GRPO-step work): one tiny
random Qwen2 written as a Hugging Face directory (r1jax.model.hf, BPE
tokenizer trained on the synthetic corpus), the same P arithmetic prompts
(R1-Zero template), G completions each of exactly L tokens, the same r1jax
reward functions (arithmetic + 0.5 format), one optimizer step of K
micro-batches per generation:

  r1jax  in this process: the GRPO stage's own pieces (grpo_rollout.Rollout:
         Sampler with no stop ids + rewards; the reference log-prob program
         over all rows at once; advantages; the update with num_minibatches
         1, grad_accum K), as bench_vs_trl runs them.
  tunix  google-tunix 0.1.7 in its own virtual environment (it installs with
         r1jax's jax / flax / optax but pins an older transformers and
         tokenizers), in a subprocess (--tunix_python): tunix's own Qwen2
         (tunix.models.qwen2, float32) loaded from the same safetensors by
         its own loader (qwen2.params.create_model_from_safe_tensors) on a
         1x1 ('fsdp', 'tp') mesh from tunix.utils.mesh, policy and reference
         two copies; RLCluster (rollout engine 'vanilla', all roles on that
         mesh, so rollout and policy share weights: no weight sync) and
         GRPOLearner.train, its real loop. Batching: mini_batch_size P (one
         optimizer step per generation), train_micro_batch_size P / K
         prompts (= r1jax's P x G / K rows per micro-batch; tunix's
         gradient accumulation is optax.MultiSteps), rollout and reference
         micro-batch P prompts (all rows at once, like r1jax).

Settings equal on both sides: temperature 1, no top-k / top-p (tunix skips
its top-p sort at top_p 1); clipped token-level surrogate, epsilon 0.2;
aggregation sequence-mean-token-mean (tunix loss_agg_mode, r1jax
seq_mean_token_mean); k3 KL in the loss with beta (tunix kl_loss_mode
'low_var_kl'); one iteration per rollout, so neither recomputes the old
policy's log-probs; group-normalised advantages, (r - group mean) / (group
sample std, ddof 1, + 1e-6); AdamW (b1 0.9, b2 0.999, eps 1e-8, no weight
decay) at a constant learning rate after clipping the global gradient norm
at 1; no remat; both losses also compute the token entropy (a metric; tunix's
also a dozen more masked means and extrema).

Differences (what tunix allows, and what the two libraries do otherwise):
  * No early stop: r1jax's sampler has no stop ids; tunix's sampler always
    stops at some id (eos_tokens, else the tokenizer's eos), so it gets the
    id -1, which no token has. tunix then treats every sampled token that
    equals the pad id as padding (its completion mask and attention mask are
    `token != pad_id`); the count is printed (about 1 in `vocab` tokens of a
    random model). The work is the same L tokens per row either way.
  * Prefill: r1jax prefills each of the P prompts once and shares it across
    its group; tunix's vanilla sampler prefills all P x G rows (each prompt
    repeated G times). Both pad prompts on the left to the longest prompt.
  * tunix's sampler seeds every generation with the same key (its
    RolloutConfig.seed default); r1jax folds the step into its key.
  * Tokens: tunix tokenizes the prompt strings and decodes the completions
    for the rewards itself (transformers' AutoTokenizer on the same
    tokenizer.json); whether its prompt ids equal r1jax's is checked and
    printed, as is the largest difference of the two models' log-probs on
    one batch before training (same weights).
  * Timing: r1jax's step is the stage's loop body; tunix's is the time
    between successive optimizer steps inside GRPOLearner.train (as
    bench_vs_trl times TRL), measured by wrapping RLCluster's methods on the
    instance: rollout = RLCluster.generate (sampling + detokenising),
    reference = get_ref_per_token_logps (blocked on, as tunix's own perf
    tracer does), update = update_actor (the K micro-batch train calls; each
    ends by waiting for its computations), reward = the learner's
    _compute_rewards; 'other' is the rest of the step (data pipeline,
    advantages, metrics, tunix's bookkeeping).

Each side's figure is the median over --steps steps after --warmup steps, one
side after the other in one run.

    source .venv/bin/activate
    python3.11 -m venv /tmp/tunix-venv     # tunix's own venv, not r1jax's
    /tmp/tunix-venv/bin/pip install google-tunix==0.1.7 jax==0.10.2 \\
        jaxlib==0.10.2 flax==0.12.8 optax==0.2.8
    python scripts/bench_vs_tunix.py --tunix_python /tmp/tunix-venv/bin/python
    python scripts/bench_vs_tunix.py --tiny --skip_tunix   # r1jax side, seconds

The machine may be shared: the load average is printed next to the figures;
run it twice.
"""

import argparse
import collections
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import bench_common

TUNIX_VERSION = '0.1.7'
REPO = pathlib.Path(__file__).resolve().parents[1]
TUNIX_INSTALL = (
    'tunix lives in its own virtual environment (it pins an older '
    'transformers and tokenizers than r1jax): python3.11 -m venv '
    '/tmp/tunix-venv && /tmp/tunix-venv/bin/pip install '
    f'google-tunix=={TUNIX_VERSION} jax==0.10.2 jaxlib==0.10.2 flax==0.12.8 '
    'optax==0.2.8, then pass --tunix_python /tmp/tunix-venv/bin/python')
_PROBE = ('import importlib.metadata as m, tunix.rl.grpo.grpo_learner, '
          'tunix.models.qwen2.params, tunix.utils.mesh, transformers; '
          'print(m.version("google-tunix"))')


def tunix_missing(python: str | None) -> str | None:
  """None when `python` imports tunix's GRPO learner, Qwen2 and mesh
  helper; else what to install."""
  if not python:
    return f'no --tunix_python given: {TUNIX_INSTALL}'
  if not (os.path.isfile(python) and os.access(python, os.X_OK)):
    return f'--tunix_python {python} is not an interpreter: {TUNIX_INSTALL}'
  try:
    probe = subprocess.run([python, '-c', _PROBE], capture_output=True,
                           text=True, timeout=600, check=False)
  except (OSError, subprocess.TimeoutExpired) as e:
    return f'{python} did not run ({e}): {TUNIX_INSTALL}'
  if probe.returncode:
    last = (probe.stderr.strip().splitlines() or ['?'])[-1]
    return f'tunix does not import in {python} ({last}): {TUNIX_INSTALL}'
  return None


# ==================================================================== tunix
# Runs in the tunix interpreter (--_tunix_worker): no r1jax imports beyond
# r1jax.rewards (pure Python, put on sys.path from this checkout).


def tunix_side(spec: dict) -> dict:
  """tunix's GRPO step on the spec's work: per-step spans and checks."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from tunix.models.qwen2 import model as qwen2_model  # pylint: disable=g-import-not-at-top
  from tunix.models.qwen2 import params as qwen2_params  # pylint: disable=g-import-not-at-top
  from tunix.rl import common  # pylint: disable=g-import-not-at-top
  from tunix.rl import rl_cluster as rl_cluster_lib  # pylint: disable=g-import-not-at-top
  from tunix.rl.grpo import grpo_learner  # pylint: disable=g-import-not-at-top
  from tunix.rl.rollout import base_rollout  # pylint: disable=g-import-not-at-top
  from tunix.utils import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, spec['repo'])
  from r1jax import rewards as rewards_lib  # pylint: disable=g-import-not-at-top

  p, g, k = spec['prompts'], spec['group'], spec['grad_accum']
  model_dir = spec['model_dir']
  hf = json.loads((pathlib.Path(model_dir) / 'config.json').read_text())
  cfg = qwen2_model.ModelConfig(
      num_layers=hf['num_hidden_layers'], vocab_size=hf['vocab_size'],
      embed_dim=hf['hidden_size'], hidden_dim=hf['intermediate_size'],
      num_heads=hf['num_attention_heads'], head_dim=hf['head_dim'],
      num_kv_heads=hf['num_key_value_heads'],
      rope_theta=int(hf['rope_theta']), norm_eps=hf['rms_norm_eps'],
      use_tied_embedding=hf['tie_word_embeddings'])
  mesh = mesh_lib.create_mesh((1, 1), ('fsdp', 'tp'),
                              devices=jax.devices()[:1])
  load = lambda: qwen2_params.create_model_from_safe_tensors(
      model_dir, cfg, mesh)
  actor = load()
  reference = load() if spec['beta'] else None
  tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
  pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id

  # Same weights: tunix's log-probs of r1jax's check batch.
  chk = spec['check']
  graphdef, state = nnx.split(actor)
  logp = common.compute_per_token_logps(
      graphdef, state, prompt_tokens=np.asarray(chk['prompt_ids'], np.int32),
      completion_tokens=np.asarray(chk['tokens'], np.int32), pad_id=pad_id,
      eos_id=eos_id)
  weight_diff = float(np.max(np.abs(np.asarray(logp) -
                                    np.asarray(chk['logp']))))

  records = spec['records']
  width, new = spec['width'], spec['new_tokens']
  optimizer = optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.adamw(spec['lr'], b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0))
  training = rl_cluster_lib.RLTrainingConfig(
      actor_optimizer=optimizer, eval_every_n_steps=10 ** 9,
      max_steps=spec['warmup'] + spec['steps'], mini_batch_size=p,
      train_micro_batch_size=p // k, rollout_micro_batch_size=p,
      compute_logps_micro_batch_size=p)
  rollout = base_rollout.RolloutConfig(
      max_tokens_to_generate=new, temperature=1.0, top_p=1.0, top_k=None,
      max_prompt_length=width, kv_cache_size=width + new, eos_tokens=[-1])
  roles = [rl_cluster_lib.Role.ACTOR, rl_cluster_lib.Role.ROLLOUT,
           rl_cluster_lib.Role.REFERENCE]
  cluster = rl_cluster_lib.RLCluster(
      actor=actor, reference=reference, tokenizer=tokenizer,
      cluster_config=rl_cluster_lib.ClusterConfig(
          role_to_mesh={r: mesh for r in roles}, rollout_engine='vanilla',
          offload_to_cpu=False, training_config=training,
          rollout_config=rollout))

  def reward(prompts, completions, record, **_):
    del prompts
    examples = [records[int(i)] for i in record]
    return rewards_lib.compute_rewards(
        completions, examples, spec['reward_weights'])[0].tolist()

  algo = grpo_learner.GRPOConfig(
      num_generations=g, num_iterations=1, beta=spec['beta'], epsilon=0.2,
      loss_agg_mode='sequence-mean-token-mean', kl_loss_mode='low_var_kl')
  learner = grpo_learner.GRPOLearner(rl_cluster=cluster, algo_config=algo,
                                     reward_fns=reward)
  tokenize = cluster.rollout._sampler.tokenize  # pylint: disable=protected-access
  same_ids = all(tokenize(s).tolist() == ids
                 for s, ids in zip(spec['prompt_strings'], spec['prompt_ids']))

  # ---- timing: wrap the cluster's and learner's methods on the instances
  spans = collections.defaultdict(float)
  steps, marks, seen = [], [], dict(min_len=None, pad_tokens=0, tokens=0)

  def timed(obj, name, span, block=False):
    fn = getattr(obj, name)

    def wrapper(*a, **kw):
      t0 = time.perf_counter()
      out = fn(*a, **kw)
      if block:
        jax.block_until_ready(out)
      spans[span] += time.perf_counter() - t0
      if span == 'rollout':
        lens = [len(t) for t in out.tokens]
        seen['min_len'] = min(lens + [seen['min_len'] or new])
        seen['pad_tokens'] += int(sum((np.asarray(t) == pad_id).sum()
                                      for t in out.tokens))
        seen['tokens'] += sum(lens)
      if span == 'update' and cluster.actor_trainer.train_steps > len(steps):
        marks.append(time.perf_counter())  # an optimizer step ended
        step = dict(spans, step=marks[-1] - marks[-2])
        step['other'] = step['step'] - sum(spans.values())
        steps.append(step)
        spans.clear()
        print(f'bench_vs_tunix: step {len(steps)} {step}', flush=True)
      return out
    setattr(obj, name, wrapper)

  timed(cluster, 'generate', 'rollout')
  timed(cluster, 'get_ref_per_token_logps', 'reference', block=True)
  timed(cluster, 'update_actor', 'update')
  timed(learner, '_compute_rewards', 'reward')

  def data():
    while True:
      yield {'prompts': list(spec['prompt_strings']),
             'record': np.arange(p)}

  marks.append(time.perf_counter())
  learner.train(data())
  n = spec['warmup'] + spec['steps']
  assert len(steps) == n, (len(steps), n)
  return dict(steps=steps[spec['warmup']:], first=steps[0]['step'],
              same_ids=same_ids, weight_diff=weight_diff, **seen,
              tunix=importlib.metadata.version('google-tunix'),
              jax=jax.__version__, transformers=transformers.__version__)


def bench_tunix(args, model_dir, records, workdir: pathlib.Path) -> dict:
  """Runs tunix_side in args.tunix_python; its result dict."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from r1jax.data import templates  # pylint: disable=g-import-not-at-top
  from r1jax.model import functional as fn  # pylint: disable=g-import-not-at-top
  from r1jax.model import hf  # pylint: disable=g-import-not-at-top
  from r1jax.stages import grpo_update  # pylint: disable=g-import-not-at-top
  ids, mask, width = bench_common.grpo_prompt_batch(model_dir, records)
  # The check batch: r1jax's log-probs of random completion tokens (never
  # the pad or eos ids) after the prompts, under the saved weights.
  cfg, _, params = hf.load_pretrained(model_dir)
  rng = np.random.default_rng(1)
  tokens = rng.integers(2, cfg.vocab_size, (len(records), 8), dtype=np.int32)
  comp = grpo_update.Completions(
      prompt_tokens=jnp.asarray(ids), prompt_mask=jnp.asarray(mask),
      tokens=jnp.asarray(tokens), mask=jnp.ones(tokens.shape, bool))
  logp = grpo_update.make_logprobs_fn(fn.abstract(cfg)[0])(params, comp)
  spec = dict(
      repo=str(REPO), model_dir=str(model_dir), records=records,
      prompt_strings=[templates.render_prompt(bench_common.GRPO_TEMPLATE,
                                              r['problem']) for r in records],
      prompt_ids=[row[m].tolist() for row, m in zip(ids, mask)],
      width=width, prompts=args.prompts, group=args.group,
      new_tokens=args.new_tokens, grad_accum=args.grad_accum,
      beta=args.beta, lr=args.lr, warmup=args.warmup, steps=args.steps,
      reward_weights=bench_common.GRPO_REWARD_WEIGHTS,
      check=dict(prompt_ids=ids.tolist(), tokens=tokens.tolist(),
                 logp=np.asarray(logp).tolist()))
  workdir.mkdir(parents=True, exist_ok=True)
  spec_path, out_path = workdir / 'spec.json', workdir / 'out.json'
  spec_path.write_text(json.dumps(spec))
  log = workdir / 'tunix.log'
  with open(log, 'w') as f:
    rc = subprocess.run(
        [args.tunix_python, str(pathlib.Path(__file__).resolve()),
         '--_tunix_worker', str(spec_path), str(out_path)],
        stdout=f, stderr=subprocess.STDOUT, check=False).returncode
  if rc or not out_path.is_file():
    tail = '\n'.join(log.read_text().splitlines()[-30:])
    raise RuntimeError(f'the tunix side failed (exit {rc}):\n{tail}')
  return json.loads(out_path.read_text())


def report_tunix(args, t: dict, r_med: float, floor_s: float) -> None:
  t_med = bench_common.median([s['step'] for s in t['steps']])
  print(f'tunix GRPOLearner: {t_med:.3f} s per step (steps '
        f'{[round(s["step"], 3) for s in t["steps"]]}; first step '
        f'{t["first"]:.1f} s with compilation; google-tunix {t["tunix"]}, jax '
        f'{t["jax"]}, transformers {t["transformers"]})')
  spans = ('rollout', 'reward', 'reference', 'update', 'other')
  split = {k: bench_common.median([s.get(k, 0.0) for s in t['steps']])
           for k in spans}
  print('  split (median s): ' + ', '.join(
      f'{k} {v:.3f} ({100 * v / t_med:.0f}%)' for k, v in split.items()))
  rows = args.prompts * args.group
  print(f'  checks: same prompt token ids as r1jax: {t["same_ids"]}; largest '
        f'|log-prob difference| from r1jax on one batch before training: '
        f'{t["weight_diff"]:.1e}; shortest completion {t["min_len"]} of '
        f'{args.new_tokens} tokens; {t["pad_tokens"]} of {t["tokens"]} '
        f'sampled tokens were the pad id (tunix masks them); '
        f'{rows} rows per step')
  print(f'ratio tunix / r1jax step time: {t_med / r_med:.2f}x (bound: a '
        f'step at 100% of the peak would be {t_med / floor_s:.1f}x)')


# ===================================================================== main


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  bench_common.add_grpo_step_args(p)
  p.add_argument('--tunix_python', default=None,
                 help="the interpreter of tunix's own venv")
  p.add_argument('--skip_tunix', action='store_true',
                 help="r1jax's side only (needs no tunix)")
  p.add_argument('--_tunix_worker', nargs=2, metavar=('SPEC', 'OUT'),
                 help=argparse.SUPPRESS)
  args = bench_common.apply_tiny(p.parse_args(argv))
  if args._tunix_worker:  # pylint: disable=protected-access
    spec, out = args._tunix_worker  # pylint: disable=protected-access
    result = tunix_side(json.loads(pathlib.Path(spec).read_text()))
    pathlib.Path(out).write_text(json.dumps(result))
    return 0
  if args.prompts % args.grad_accum:
    p.error('--prompts must be a multiple of --grad_accum (tunix splits '
            'micro-batches by prompt)')
  if not args.skip_tunix:
    missing = tunix_missing(args.tunix_python)
    if missing:
      print(f'tunix side cannot run: {missing}')
      print('(or pass --skip_tunix for r1jax\'s side alone)')
      return 2

  with tempfile.TemporaryDirectory() as tmp:
    model_dir, records, r_med, floor_s = bench_common.r1jax_grpo_side(
        args, pathlib.Path(tmp))
    if not args.skip_tunix:
      print(f'load average between: {bench_common.load_average()}')
      t = bench_tunix(args, model_dir, records, pathlib.Path(tmp) / 'tunix')
      report_tunix(args, t, r_med, floor_s)
    print(f'load average after: {bench_common.load_average()}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

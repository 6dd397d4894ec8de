"""One GRPO step, r1jax against TRL's GRPOTrainer, same weights and work, CPU.

Both sides load one tiny random Qwen2 model from the same Hugging Face
directory (written by r1jax.model.hf.save_pretrained, with a BPE tokenizer
trained on the synthetic corpus), take the same P arithmetic prompts (R1-Zero
template), sample G completions each of exactly L tokens (no early stop:
r1jax's sampler has no stop ids, TRL generates with min_new_tokens = L),
score them with the same r1jax reward functions (arithmetic + 0.5 format),
and make one optimizer step per generation:

  r1jax   the GRPO stage's own pieces: grpo_rollout.Rollout (Sampler +
          rewards), grpo_update.advantages, the reference log-prob program,
          the update (num_minibatches 1, grad_accum K)
  TRL     GRPOTrainer, transformers generate (no vLLM), float32,
          per_device_train_batch_size = P x G / K, gradient_accumulation_steps
          = K (so steps_per_generation = K: one generation per step, no
          old-log-prob pass), gradient_checkpointing off (TRL turns it on by
          default; r1jax's remat is off here too)

Loss settings, equal on both sides: clipped token-level surrogate with
epsilon 0.2, loss_type 'grpo' (TRL) = aggregation 'seq_mean_token_mean'
(r1jax: mean over each sequence's tokens, then over sequences), k3 KL in the
loss with beta (default 0.001, the paper's), group-normalised advantages,
temperature 1, no top-k / top-p, AdamW at a constant learning rate with
gradient clipping at 1, one iteration per rollout.

Each side's wall time per step is the median over --steps steps after
--warmup steps (TRL: the time between successive optimizer steps, measured
by a trainer callback; r1jax: the stage's loop body), in the same process, one
after the other. r1jax's step is split into the stage's timing spans: sample,
reward, reference, update (and the rest: advantages, host-to-device).

    source .venv/bin/activate
    pip install torch==2.13.0 transformers==5.25.0 trl==1.16.0  # not r1jax deps
    python scripts/bench_vs_trl.py
    python scripts/bench_vs_trl.py --tiny --skip_trl    # r1jax side, seconds

The machine may be shared: the load average is printed next to the figures;
run it twice.
"""

import argparse
import pathlib
import tempfile
import time

import jax
import ml_collections
import numpy as np

import bench_common
from r1jax import parallel
from r1jax import rl
from r1jax.model import functional as fn
from r1jax.model import hf
from r1jax.sampling import Sampler
from r1jax.run import console
from r1jax.run import train_state
from r1jax.stages import grpo_rollout
from r1jax.stages import grpo_update

TRL_INSTALL = ('pip install torch==2.13.0 transformers==5.25.0 trl==1.16.0 '
               '(into the venv; they are not r1jax dependencies)')
TEMPLATE = 'r1_zero_short'
REWARD_WEIGHTS = {'arithmetic': 1.0, 'format': 0.5}


# ==================================================================== setup


def write_model(args, out: pathlib.Path):
  """A random tiny Qwen2 + a BPE tokenizer as an HF directory."""
  from r1jax.data import corpus  # pylint: disable=g-import-not-at-top
  from r1jax.tokenizer import train_bpe  # pylint: disable=g-import-not-at-top
  texts = corpus.tokenizer_training_texts(
      corpus.CorpusConfig(r1_template=TEMPLATE), n_docs=300, seed=0)
  tok = train_bpe(texts, args.vocab, config={
      'eos_token': '<|endoftext|>', 'pad_token': '<|pad|>',
      'chat_format': 'plain'})
  cfg = bench_common.bench_model_config(
      hidden=args.hidden, layers=args.layers, vocab=args.vocab,
      heads=args.heads, kv_heads=args.kv_heads,
      intermediate=args.intermediate)
  _, params = fn.init(cfg, seed=0)
  hf.save_pretrained(out, cfg, params, tokenizer=tok)
  return out


def problems(args) -> list[dict]:
  from r1jax.data import synthetic  # pylint: disable=g-import-not-at-top
  return synthetic.generate('arithmetic', args.prompts, seed=0, split='train',
                            num_operands=(2, 4), max_digits=1, operators='+-')


def loss_config(args) -> rl.LossConfig:
  return rl.LossConfig(policy_loss='clipped_token',
                       aggregation='seq_mean_token_mean', kl_estimator='k3',
                       beta=args.beta, epsilon_low=0.2, epsilon_high=0.2)


# ==================================================================== r1jax


class _SameBatch:
  """The PromptBatcher interface: the same P prompts every step."""

  def __init__(self, batch):
    self.batch = batch

  def __next__(self):
    return self.batch


def r1jax_config(args):
  c = ml_collections.ConfigDict()
  c.sampling = dict(max_new_tokens=args.new_tokens, temperature=1.0,
                    top_p=1.0, top_k=0)
  c.rl = bench_common.grpo_rl_section(
      args.group, prompts_per_step=args.prompts, dynamic_sampling=False,
      max_sampling_rounds=1)
  c.rewards = dict(weights=REWARD_WEIGHTS, options={}, accuracy='arithmetic')
  return c


def bench_r1jax(args, model_dir, records):
  """Per-step seconds and the stage's timing spans of each step."""
  from r1jax.data import templates  # pylint: disable=g-import-not-at-top
  from r1jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  cfg, _, params = hf.load_pretrained(model_dir)
  graphdef, _ = fn.abstract(cfg)
  tok = Tokenizer.from_dir(model_dir)
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  seqs = [templates.prompt_ids(TEMPLATE, r['problem'], tok) for r in records]
  width = max(len(s) for s in seqs)
  ids, mask = _left_pad(seqs, width, tok.pad_id)
  batch = dict(prompt_ids=ids, prompt_mask=mask, examples=records)
  config = r1jax_config(args)
  sampler = Sampler(graphdef, cfg, pad_id=tok.pad_id, eos_ids=(),
                    prompt_buckets=(width,), mesh=mesh)
  rollout = grpo_rollout.Rollout(config, sampler, tok, _SameBatch(batch))
  opt = train_state.make_optimizer(ml_collections.ConfigDict(dict(
      lr=args.lr, warmup_steps=0, steps=1000, min_lr_ratio=1.0, clip_norm=1.0,
      b1=0.9, b2=0.999, weight_decay=0.0)))
  state, _ = train_state.init_train_state(params, opt, 0, mesh)
  ref_params = grpo_update.copy_tree(state['params']) if args.beta else None
  update_fn = grpo_update.make_update_fn(
      graphdef, opt, loss_config=loss_config(args), num_iterations=1,
      num_minibatches=1, grad_accum=args.grad_accum, mesh=mesh)
  logprobs_fn = grpo_update.make_logprobs_fn(graphdef)
  timer = console.Timer()
  key = jax.random.key(0)
  steps = []
  for step in range(args.warmup + args.steps):
    t0 = time.perf_counter()
    # ---- the GRPO stage's loop body (stages/grpo.py), minus logging
    host = rollout(state['params'], jax.random.fold_in(key, step), timer)
    state, m = bench_common.grpo_device_step(
        host, config, mesh, state, update_fn, logprobs_fn, ref_params, timer)
    times = timer.pop()
    times['step'] = time.perf_counter() - t0
    times['other'] = times['step'] - sum(
        v for k, v in times.items() if k != 'step')
    assert float(m['loss_finite']) == 1.0
    assert int(host.sample.lengths.min()) == args.new_tokens  # no early stop
    steps.append(times)
  return steps[args.warmup:], dict(width=width, first=steps[0]['step'],
                                   cfg=cfg)


def _left_pad(seqs, width, pad_id):
  ids = np.full((len(seqs), width), pad_id, np.int32)
  mask = np.zeros((len(seqs), width), bool)
  for i, s in enumerate(seqs):
    ids[i, width - len(s):] = s
    mask[i, width - len(s):] = True
  return ids, mask


# ====================================================================== TRL


def bench_trl(args, model_dir, records, workdir):
  """Per-step seconds of GRPOTrainer (between successive optimizer steps)."""
  import datasets  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  import trl  # pylint: disable=g-import-not-at-top
  from r1jax import rewards as rewards_lib  # pylint: disable=g-import-not-at-top
  from r1jax.data import templates  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(args.torch_threads)
  tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
  tokenizer.padding_side = 'left'
  from r1jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  r1jax_tok = Tokenizer.from_dir(model_dir)
  same_ids = all(
      tokenizer(templates.render_prompt(TEMPLATE, r['problem']),
                add_special_tokens=False).input_ids ==
      templates.prompt_ids(TEMPLATE, r['problem'], r1jax_tok) for r in records)
  data = datasets.Dataset.from_list([
      {'prompt': templates.render_prompt(TEMPLATE, r['problem']),
       'record': i} for i, r in enumerate(records)])

  def reward(prompts, completions, record, **_):
    examples = [records[i] for i in record]
    return rewards_lib.compute_rewards(completions, examples,
                                       REWARD_WEIGHTS)[0].tolist()
  reward.__name__ = 'r1jax_rewards'

  rows = args.prompts * args.group
  steps = args.warmup + args.steps
  config = trl.GRPOConfig(
      output_dir=str(workdir), per_device_train_batch_size=rows // args.grad_accum,
      gradient_accumulation_steps=args.grad_accum, num_generations=args.group,
      max_completion_length=args.new_tokens,
      generation_kwargs={'min_new_tokens': args.new_tokens},
      temperature=1.0, top_p=1.0, top_k=0, beta=args.beta, epsilon=0.2,
      loss_type='grpo', scale_rewards='group', num_iterations=1,
      learning_rate=args.lr, lr_scheduler_type='constant', warmup_steps=0,
      weight_decay=0.0, adam_beta2=0.999, max_grad_norm=1.0, max_steps=steps,
      gradient_checkpointing=False, use_cpu=True, bf16=False,
      report_to='none', logging_steps=10 ** 6, save_strategy='no',
      disable_tqdm=True, seed=0, shuffle_dataset=False,
      dataloader_num_workers=0, log_completions=False)

  class StepTimes(transformers.TrainerCallback):
    def __init__(self):
      self.marks = []

    def on_train_begin(self, *_, **__):
      self.marks.append(time.perf_counter())

    def on_step_end(self, *_, **__):
      self.marks.append(time.perf_counter())

  timer = StepTimes()
  trainer = trl.GRPOTrainer(model=str(model_dir), reward_funcs=reward,
                            args=config, train_dataset=data,
                            processing_class=tokenizer, callbacks=[timer])
  trainer.train()
  times = np.diff(timer.marks).tolist()
  assert len(times) == steps, (len(times), steps)
  return times[args.warmup:], dict(first=times[0], same_ids=same_ids,
                                   torch=torch.__version__,
                                   trl=trl.__version__,
                                   transformers=transformers.__version__)


def trl_missing() -> str | None:
  try:
    import datasets, torch, transformers, trl  # pylint: disable=g-import-not-at-top,multiple-imports,unused-import
  except ImportError as e:
    return f'{e.name} is not installed: {TRL_INSTALL}'
  return None


# ===================================================================== main


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--prompts', type=int, default=8, help='P prompts per step')
  p.add_argument('--group', type=int, default=8, help='G samples per prompt')
  p.add_argument('--new_tokens', type=int, default=64, help='L, exactly')
  p.add_argument('--grad_accum', type=int, default=2,
                 help='K micro-batches per optimizer step (TRL: '
                 'gradient_accumulation_steps)')
  p.add_argument('--beta', type=float, default=0.001)
  p.add_argument('--lr', type=float, default=1e-6)
  p.add_argument('--hidden', type=int, default=192)
  p.add_argument('--intermediate', type=int, default=512)
  p.add_argument('--layers', type=int, default=4)
  p.add_argument('--heads', type=int, default=6)
  p.add_argument('--kv_heads', type=int, default=2)
  p.add_argument('--vocab', type=int, default=512)
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--steps', type=int, default=4, help='timed steps per side')
  p.add_argument('--torch_threads', type=int, default=2)
  p.add_argument('--skip_trl', action='store_true')
  p.add_argument('--tiny', action='store_true',
                 help='seconds: 2 prompts x 2 samples x 8 tokens, 2 layers')
  args = p.parse_args(argv)
  if args.tiny:
    args.prompts, args.group, args.new_tokens, args.grad_accum = 2, 2, 8, 2
    args.hidden, args.intermediate, args.layers = 64, 128, 2
    args.heads, args.kv_heads, args.vocab = 4, 2, 384
    args.steps = 1
  missing = None if args.skip_trl else trl_missing()
  if missing:
    print(f'TRL side skipped: {missing}')

  with tempfile.TemporaryDirectory() as tmp:
    model_dir = write_model(args, pathlib.Path(tmp) / 'model')
    records = problems(args)
    rows = args.prompts * args.group
    print(f'model: {args.layers} layers, hidden {args.hidden}, vocab '
          f'{args.vocab} (random Qwen2, float32, {model_dir.name}/ in HF '
          f'format); {args.prompts} prompts x {args.group} samples = {rows} '
          f'rows, {args.new_tokens} new tokens each, grad_accum '
          f'{args.grad_accum}, beta {args.beta}; median of {args.steps} steps '
          f'after {args.warmup} warm-up')
    print(f'load average before: {bench_common.load_average()}')
    r_steps, r_info = bench_r1jax(args, model_dir, records)
    r_med = bench_common.median([s['step'] for s in r_steps])
    print(f'r1jax: {r_med:.3f} s per step (steps '
          f'{[round(s["step"], 3) for s in r_steps]}; first step '
          f'{r_info["first"]:.1f} s with compilation; prompt width '
          f'{r_info["width"]})')
    spans = ('sample', 'reward', 'reference', 'update', 'other')
    split = {k: bench_common.median([s.get(k, 0.0) for s in r_steps])
             for k in spans}
    print('  split (median s): ' + ', '.join(
        f'{k} {v:.3f} ({100 * v / r_med:.0f}%)' for k, v in split.items()))
    print(f'  {rows * args.new_tokens / split["sample"]:.0f} sampled tokens/s')
    # The step's model FLOPs (bench_common's conventions): sampling, the
    # reference forward pass, the update's forward + backward.
    cfg, width, new = r_info['cfg'], r_info['width'], args.new_tokens
    seq = width + new - 1
    step_flops = (
        bench_common.generate_flops(cfg, rows, width, new,
                                    prompts=args.prompts)
        + (bench_common.forward_flops(cfg, rows, seq, head_positions=new)
           if args.beta else 0)
        + bench_common.train_flops(cfg, rows, seq, head_positions=new))
    peak = bench_common.matmul_peak(
        sizes=[128] if args.tiny else [512, 1024, 2048])
    floor_s = step_flops / peak['flops']
    print(f'  {step_flops / 1e9:.1f} GFLOP (model) per step -> '
          f'{step_flops / r_med / 1e9:.1f} GFLOP/s = '
          f'{100 * floor_s / r_med:.0f}% of the measured matmul peak '
          f'({peak["flops"] / 1e9:.0f} GFLOP/s); at 100% of it the step '
          f'would take {floor_s:.3f} s')
    if not args.skip_trl and not missing:
      t_steps, t_info = bench_trl(args, model_dir, records,
                                  pathlib.Path(tmp) / 'trl')
      t_med = bench_common.median(t_steps)
      print(f'TRL GRPOTrainer: {t_med:.3f} s per step (steps '
            f'{[round(t, 3) for t in t_steps]}; first step '
            f'{t_info["first"]:.1f} s; trl {t_info["trl"]}, transformers '
            f'{t_info["transformers"]}, torch {t_info["torch"]}, '
            f'{args.torch_threads} threads); same prompt token ids as '
            f'r1jax: {t_info["same_ids"]}')
      print(f'ratio TRL / r1jax step time: {t_med / r_med:.1f}x (bound: a '
            f'step at 100% of the peak would be {t_med / floor_s:.1f}x)')
    print(f'load average after: {bench_common.load_average()}')


if __name__ == '__main__':
  main()

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

import numpy as np

import bench_common

TRL_INSTALL = ('pip install torch==2.13.0 transformers==5.25.0 trl==1.16.0 '
               '(into the venv; they are not r1jax dependencies)')
TEMPLATE = bench_common.GRPO_TEMPLATE
REWARD_WEIGHTS = bench_common.GRPO_REWARD_WEIGHTS


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
  bench_common.add_grpo_step_args(p)
  p.add_argument('--torch_threads', type=int, default=2)
  p.add_argument('--skip_trl', action='store_true')
  args = bench_common.apply_tiny(p.parse_args(argv))
  missing = None if args.skip_trl else trl_missing()
  if missing:
    print(f'TRL side skipped: {missing}')

  with tempfile.TemporaryDirectory() as tmp:
    model_dir, records, r_med, floor_s = bench_common.r1jax_grpo_side(
        args, pathlib.Path(tmp))
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

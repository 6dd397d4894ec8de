r"""The base-model ability check (r1jax/base_ability.py) on any tiny base.

    python scripts/check_base.py ~/.cache/r1jax/tiny_base/<key>
    python scripts/check_base.py DIR --num_problems=256 --num_samples=4

Samples the base under the R1-Zero template used by experiments/zero.py and
under a plain prompt that asks for steps, and prints the figures R1-Zero RL
needs from it (share of step-by-step answers, their accuracy against direct
answers, single-step accuracy, format) and whether experiments/pretrain_tiny.py's
minimums hold. The held-out problems are experiments/zero.py's.
"""

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import pretrain_tiny
from experiments import zero
from r1jax import base_ability
from r1jax import generate
from r1jax.sampling import Sampler
from r1jax.run import problems


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('base', help='a Hugging Face directory of a tiny base model')
  p.add_argument('--num_problems', type=int, default=256)
  p.add_argument('--num_samples', type=int, default=4)
  p.add_argument('--json', action='store_true', help='print JSON only')
  p.add_argument('--variant', default='',
                 help="experiments/zero.py's argument whose template and "
                 "budget to use, e.g. 'check' (128 tokens)")
  args = p.parse_args()
  cfg, graphdef, params, tokenizer = generate.load_checkpoint(args.base)
  config = zero.get_config(args.variant)
  config.eval.num_problems = args.num_problems
  records = problems.eval_records(config)
  sampler = Sampler(graphdef, cfg, pad_id=tokenizer.pad_id,
                    eos_ids=[tokenizer.eos_id])
  figures = base_ability.measure(
      sampler, params, tokenizer, records, template=config.eval.template,
      num_samples=args.num_samples, temperature=config.eval.temperature,
      max_new_tokens=config.eval.max_new_tokens,
      accuracy_reward=config.rewards.accuracy)
  req = pretrain_tiny.get_config(config.model.pretrain_arg).ability.requirements.to_dict()
  failures = base_ability.check(figures, req)
  if args.json:
    print(json.dumps({'figures': figures, 'failures': failures}))
    return
  print(base_ability.describe(figures))
  print('passes' if not failures else 'fails: ' + '; '.join(failures))


if __name__ == '__main__':
  main()

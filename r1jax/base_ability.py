"""What R1-Zero needs from a base model, measured on held-out problems.

R1-Zero RL can only move a policy toward working step by step if, under the
template it trains with, step-by-step answers already pay more than direct
ones. A base whose steps are no more accurate than its guesses gives RL
nothing to find (the issue-19 study: only the base with a +25 point gap
learned). `measure` samples the base under the RL template and sorts the
samples into step-by-step (at least one 'a op b = c') and direct answers:

  steps_share           share of samples written step by step
  steps_accuracy        accuracy of those
  direct_accuracy       accuracy of the direct ones
  gap                   steps_accuracy - direct_accuracy (what RL exploits)
  single_step_accuracy  share of written steps whose result is right
  plain_steps_accuracy  accuracy when a plain prompt asks for steps (the
                        latent ability, `plain_steps` template)
  format_rate, pass@1   under the RL template
  check_share           share of samples that check a step by its inverse
                        (reasoning_stats.checks_a_step); check_accuracy and
                        unchecked_steps_accuracy: whether checking pays

`check(figures, requirements)` compares them with the minimums a config sets
and returns the failures as readable lines. The figures are saved beside the
exported weights (`ABILITY_FILE`), the GRPO stage prints them at start and
refuses a cached tiny base whose check failed.
"""

import hashlib
import json
import pathlib
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from r1jax import atomic
from r1jax import evaluate
from r1jax import reasoning_stats
from r1jax.data import corpus

ABILITY_FILE = 'base_ability.json'

# Figure -> (requirement key, what to change when it is too low).
_REQUIREMENTS = {
    'gap': ('min_gap', 'step-by-step answers must beat direct ones'),
    'steps_share': ('min_steps_share',
                    'RL needs some step-by-step samples to reinforce'),
    'plain_steps_accuracy': ('min_plain_steps_accuracy',
                             'the base must be able to compute step by step'),
    'format_rate': ('min_format_rate', 'the base must know the tags'),
}


def measure(sampler, params, tokenizer, records: Sequence[Mapping[str, Any]],
            *, template: str, num_samples: int = 4, temperature: float = 1.0,
            max_new_tokens: int = 64, batch_size: int = 256, seed: int = 1234,
            accuracy_reward: str | None = None,
            plain_template: str = 'plain_steps') -> dict[str, float]:
  """The figures above for `params` on `records` (see the module doc)."""
  kw = dict(num_samples=num_samples, temperature=temperature, top_p=1.0,
            max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
            accuracy_reward=accuracy_reward)
  s = evaluate.evaluate_problems(sampler, params, tokenizer, records,
                                 template=template, return_completions=True,
                                 **kw)
  texts = s['completions']
  correct = np.asarray(s['correct'], np.float64).reshape(-1)
  stepped = np.asarray([bool(reasoning_stats.STEP_RE.search(t))
                        for t in texts])
  right, total = reasoning_stats.step_accuracy(
      [t for t, st in zip(texts, stepped) if st])
  checked = np.asarray([reasoning_stats.checks_a_step(t) for t in texts])
  plain = evaluate.evaluate_problems(sampler, params, tokenizer, records,
                                     template=plain_template, **kw)
  mean = lambda x: float(x.mean()) if x.size else 0.0
  figures = {
      'pass@1': float(s['pass@1']),
      'format_rate': float(s['format_rate']),
      'mean_length': float(s['mean_length']),
      'steps_share': mean(stepped.astype(np.float64)),
      'steps_accuracy': mean(correct[stepped]),
      'direct_accuracy': mean(correct[~stepped]),
      'single_step_accuracy': right / total if total else 0.0,
      'plain_steps_accuracy': float(plain['pass@1']),
      'reflection_rate': float(s['reflection_rate']),
      # Does checking pay? (the corpus's p_check documents; 0 without them)
      'check_share': mean(checked.astype(np.float64)),
      'check_accuracy': mean(correct[checked]),
      'unchecked_steps_accuracy': mean(correct[stepped & ~checked]),
      'num_problems': float(len(records)),
      'num_samples': float(num_samples),
  }
  figures['gap'] = figures['steps_accuracy'] - figures['direct_accuracy']
  return figures


def check(figures: Mapping[str, float],
          requirements: Mapping[str, float]) -> list[str]:
  """One line per figure below its minimum (empty: the base passes)."""
  failures = []
  for name, (key, why) in _REQUIREMENTS.items():
    if key in requirements and figures.get(name, 0.0) < requirements[key]:
      failures.append(f'{name} {figures.get(name, 0.0):.3f} < '
                      f'{requirements[key]:.3f} ({why})')
  return failures


def describe(figures: Mapping[str, float]) -> str:
  """The figures as one line."""
  names = ('pass@1', 'steps_share', 'steps_accuracy', 'direct_accuracy',
           'gap', 'single_step_accuracy', 'plain_steps_accuracy',
           'format_rate', 'mean_length')
  if figures.get('check_share'):
    names += ('check_share', 'check_accuracy', 'unchecked_steps_accuracy')
  return ' | '.join(f'{n} {figures[n]:.3f}' for n in names if n in figures)


def record_text(figures: Mapping[str, float], requirements, failures,
                made_by: Mapping[str, Any]) -> str:
  """The ABILITY_FILE text (the SFT stage writes it with its export, which
  then appears complete in one rename: hf.save_pretrained's extra_files)."""
  record = {'passed': not failures, 'figures': dict(figures),
            'requirements': dict(requirements), 'failures': list(failures),
            'made_by': dict(made_by)}
  return json.dumps(record, indent=2, sort_keys=True) + '\n'


def save(directory, figures: Mapping[str, float], requirements, failures,
         made_by: Mapping[str, Any]) -> pathlib.Path:
  """Writes ABILITY_FILE into `directory` (atomically: temp name, rename)."""
  path = pathlib.Path(directory) / ABILITY_FILE
  atomic.write_text(path, record_text(figures, requirements, failures, made_by))
  return path


def load(directory) -> dict[str, Any] | None:
  """The saved record of `directory`, or None when it has none."""
  path = pathlib.Path(directory) / ABILITY_FILE
  if not path.is_file():
    return None
  return json.loads(path.read_text())


# ================================================= what made a base

# Pretraining fields that do not change the weights: left out of the key.
_NOT_IN_KEY = ('export', 'mesh', 'train.log_every', 'train.checkpoint_every',
               'train.keep_checkpoints', 'train.sample_every',
               'train.sample_tokens', 'train.eval_every', 'train.eval_batches',
               'eval.batch_size', 'eval.few_shot', 'eval.few_shot_seed')
# Corpus fields added after CORPUS_VERSION 2, with the value that leaves the
# documents unchanged: left out of the key at that value, so the bases made
# before they existed keep their keys.
_ADDED_CORPUS_FIELDS = {'p_check': 0.0, 'p_slip': 0.15}


def base_key(pre: ml_collections.ConfigDict) -> str:
  """'seed<S>-<hash>' of a pretraining config: its seed and a hash of every
  field that changes the weights, with the corpus version (the key of the
  tiny-base cache, r1jax/tiny_base.py)."""
  d = json.loads(pre.to_json_best_effort(sort_keys=True))
  for dotted in _NOT_IN_KEY:
    node, *rest = dotted.split('.')
    if rest:
      d.get(node, {}).pop(rest[0], None)
    else:
      d.pop(node, None)
  c = d.get('data', {}).get('corpus', {})
  for name, off in _ADDED_CORPUS_FIELDS.items():
    if name in c and (c[name] == off or name == 'p_slip' and not c.get(
        'p_check')):
      c.pop(name)
  blob = json.dumps([corpus.CORPUS_VERSION, d], sort_keys=True)
  digest = hashlib.blake2b(blob.encode(), digest_size=5).hexdigest()
  return f'seed{pre.seed}-{digest}'


def made_by(pre: ml_collections.ConfigDict) -> dict[str, Any]:
  """What the ability record says made a base (checked on reuse)."""
  return {'base_key': base_key(pre), 'seed': int(pre.seed),
          'corpus_version': corpus.CORPUS_VERSION}

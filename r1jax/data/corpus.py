"""Pretraining corpus for the tiny CPU base model, built over synthetic tasks.

The corpus is designed so that R1-Zero RL has something to discover. Under
the R1-Zero template the base model should be right well below its
potential: it often answers directly (short, and wrong for hard instances a
small model cannot compute in one shot) and only sometimes reasons step by
step in the `<think>/<answer>` format (long, and usually right, because each
step is a single two-operand operation). RL then shifts the policy towards
the steps: accuracy up, responses longer, format compliance up.

Every document is a prompt followed by a completion, drawn independently:

  prompt style   'r1' with probability p_r1_prompt: exactly
                 render_prompt('r1_zero', problem); else one of
                 `plain_prompts` ('Question: ...\\nAnswer:', ...).
  solution kind  'direct' with probability p_direct (p_direct_r1 under the
                 R1 prompt): the answer alone. Otherwise 'steps': one
                 'a op b = c.' sentence per operation, which becomes
                 'self_correct' with probability p_self_correct: one step is
                 first written wrong, then fixed ('37 + 48 = 84. Wait,
                 37 + 48 = 85, not 84.'); else 'checked' with probability
                 p_check (default 0): every step checked by its inverse,
                 a slip caught and fixed ('3 + 2 = 6, check 6 - 2 = 4,
                 not 3. Wait, 3 + 2 = 5.').
  format         under the R1 prompt, tagged with probability p_r1_tags:
                 ' <think> ... </think> <answer> 72 </answer>' (a direct
                 answer thinks a short stock sentence); else plain text
                 (" Let's compute step by step. ... The answer is 72.").

Records carry `kind` and `format` ('r1', 'r1_untagged', 'plain') so
experiments can check the mixture. Problems come from the train split only,
so the corpus never contains a held-out evaluation problem.

With the defaults, under the R1 prompt a model that imitates the corpus
answers in the tagged format 70% of the time and with steps 30% of the time.
"""

import dataclasses
import random
from typing import Any, Sequence

from r1jax.data import synthetic
from r1jax.data import templates

# Bumped whenever a change here changes the documents a config makes: the
# tiny base cache (r1jax/tiny_base.py) keys its bases by it.
CORPUS_VERSION = 2

def render_prompt(template: str, problem: str) -> str:
  """`problem` in prompt template `template` (r1jax.data.templates)."""
  return templates.render_prompt(template, problem)


def _default_difficulty() -> dict[str, dict[str, Any]]:
  return {
      # 2 operands of 1 digit are memorisable; 4-5 of 2 digits are not in
      # one shot, but every step of them is.
      'arithmetic': dict(num_operands=(2, 5), max_digits=(1, 2),
                         operators='+-'),
      'countdown': dict(num_numbers=(3, 4), number_range=(1, 25),
                        operators='+-*/', max_target=200),
  }


@dataclasses.dataclass
class CorpusConfig:
  """Mixture knobs of the pretraining corpus (probabilities in [0, 1])."""

  # Tasks: name -> relative weight (names from synthetic.TASKS). Add
  # 'countdown' with a weight to mix it in.
  task_weights: dict[str, float] = dataclasses.field(
      default_factory=lambda: {'arithmetic': 1.0})
  # Task name -> difficulty knobs passed to the task sampler (ranges are
  # drawn per problem). Match the RL prompts' difficulty.
  difficulty: dict[str, dict[str, Any]] = dataclasses.field(
      default_factory=_default_difficulty)

  # Fraction of documents whose prompt is the R1-Zero template.
  p_r1_prompt: float = 0.5
  # Fraction of R1-prompt documents whose completion uses the
  # <think>/<answer> tags (the base model's initial format compliance).
  p_r1_tags: float = 0.7
  # Fraction of documents that answer directly instead of step by step.
  p_direct: float = 0.5
  # The same under the R1 prompt; None means p_direct. This sets how often
  # the base model answers directly under the R1 template.
  p_direct_r1: float | None = 0.7
  # Fraction of step-by-step documents with one error that is noticed and
  # corrected ('Wait, ...').
  p_self_correct: float = 0.15
  # Fraction of documents that are arithmetic drill: `drill_facts` step
  # sentences ('17 + 8 = 25.') taken from the steps of other train problems,
  # with no prompt. They make single steps reliable, so that working step by
  # step pays more than answering directly (the gap R1-Zero RL exploits).
  # Drawn from a stream of its own: 0 leaves every other document unchanged.
  p_drill: float = 0.0
  drill_facts: tuple[int, int] = (6, 10)
  # Restate what is left after each step of a +/- arithmetic problem:
  # '3 + 2 = 5, so 5 - 5 + 3. 5 - 5 = 0, so 0 + 3. 0 + 3 = 3.' Each step's
  # operands are then the start of the text just written, not the k-th
  # number of a prompt far back, which a tiny model often picks wrongly.
  restate: bool = False
  # Fraction of step-by-step documents (not self-corrections) that check
  # every step by its inverse operation ('3 + 2 = 5, check 5 - 2 = 3'); in
  # them each step's first result is a slip with probability p_slip, which
  # the check catches and fixes ('3 + 2 = 6, check 6 - 2 = 4, not 3. Wait,
  # 3 + 2 = 5'). Unlike a self-correction, whose error is written on
  # purpose, a check computed right catches the model's own slips too, so
  # checking can pay under RL. Drawn from a stream of its own: 0 leaves
  # every other document unchanged.
  p_check: float = 0.0
  p_slip: float = 0.15

  # Prompt formats for documents without the R1 template.
  plain_prompts: tuple[str, ...] = (
      'Question: {problem}\nAnswer:',
      'Problem: {problem}\nSolution:',
      'Q: {problem}\nA:',
  )
  # Short thoughts of tagged direct answers (the strict format reward needs
  # a non-empty think block).
  direct_thoughts: tuple[str, ...] = (
      'I know this.',
      'Easy.',
      'The answer is clear.',
  )
  # Template name of R1-prompt documents.
  r1_template: str = 'r1_zero'

  def validate(self) -> None:
    for name in ('p_r1_prompt', 'p_r1_tags', 'p_direct', 'p_direct_r1',
                 'p_self_correct', 'p_drill', 'p_check', 'p_slip'):
      p = getattr(self, name)
      if p is not None and not 0.0 <= p <= 1.0:
        raise ValueError(f'CorpusConfig.{name}={p} is not in [0, 1].')
    if not self.task_weights or min(self.task_weights.values()) < 0 or (
        sum(self.task_weights.values()) <= 0):
      raise ValueError(f'CorpusConfig.task_weights={self.task_weights} needs '
                       'non-negative weights with a positive sum.')
    for task in self.task_weights:
      synthetic.TASKS.get(task)  # Raises naming the known tasks.
    lo, hi = self.drill_facts
    if not 1 <= lo <= hi:
      raise ValueError(f'CorpusConfig.drill_facts={self.drill_facts} must be '
                       '(lo, hi) with 1 <= lo <= hi.')
    if not self.plain_prompts or not self.direct_thoughts:
      raise ValueError('CorpusConfig.plain_prompts and direct_thoughts must '
                       'not be empty.')


# ----------------------------------------------------------------------------
# Completions
# ----------------------------------------------------------------------------


def _sentences(steps: Sequence[str]) -> str:
  return ' '.join(f'{s}.' for s in steps)


def self_correcting_steps(steps: Sequence[str], rng: random.Random) -> list[str]:
  """The steps with one result first written wrong, then corrected."""
  j = rng.randrange(len(steps))
  a, op, b, c = synthetic.parse_step(steps[j])
  delta = rng.choice((-10, -2, -1, 1, 2, 10))
  wrong = c + delta if c + delta >= 0 else c - delta
  out = list(steps[:j])
  out.append(synthetic.step_text(a, op, b, wrong))
  out.append(f'Wait, {a} {op} {b} = {c}, not {wrong}')
  out.extend(steps[j + 1:])
  return out


def checked_steps(steps: Sequence[str], p_slip: float,
                  rng: random.Random) -> list[str]:
  """Each step followed by its check by the inverse operation ('a + b = c,
  check c - b = a'); with probability `p_slip` a step's first result is
  wrong, and its check shows it and fixes it ('a + b = w, check w - b = x,
  not a. Wait, a + b = c'). One sentence per step, as `steps`."""
  out = []
  for step in steps:
    a, op, b, c = synthetic.parse_step(step)
    inv = synthetic.INVERSE_OP[op]
    text = f'{step}, check {synthetic.step_text(c, inv, b, a)}'
    if rng.random() < p_slip:
      for _ in range(10):  # a slip whose check shows it (else none)
        w = c + rng.choice((-10, -2, -1, 1, 2, 10))
        try:
          x = synthetic.apply_op(w, inv, b)
        except ValueError:  # an inexact division: another slip
          continue
        if (w >= 0 or c < 0) and x != a:
          text = (f'{synthetic.step_text(a, op, b, w)}, check '
                  f'{synthetic.step_text(w, inv, b, x)}, not {a}. Wait, {step}')
          break
    out.append(text)
  return out


def remainders(record: dict) -> list[str | None] | None:
  """Per step of a flat +/- arithmetic problem (or a code problem's
  constant, its `expression`), the expression left after it ('5 - 5 + 3'
  after '3 + 2 = 5' in 'Compute 3 + 2 - 5 + 3'; None after the last step);
  None for other problems."""
  if record.get('task') == 'code':
    expression = record['expression']
  elif record.get('task') == 'arithmetic':
    expression = record['problem'].removeprefix('Compute ')
  else:
    return None
  parts = expression.split(' ')
  nums, ops = parts[0::2], parts[1::2]
  steps = record['solution_steps']
  if '*' in ops or len(ops) != len(steps):
    return None
  out = []
  for j, step in enumerate(steps):
    c = synthetic.parse_step(step)[3]
    tail = ''.join(f' {op} {n}' for op, n in zip(ops[j + 1:], nums[j + 2:]))
    out.append(f'{c}{tail}' if tail else None)
  return out


def answer_text(record: dict) -> str:
  """What a document gives as the answer: the integer, or for a `code`
  problem its program in a fenced block ('```python\\ndef f(x): ...```')."""
  if record.get('task') == 'code':
    return f"```python\n{record['answer']}\n```"
  return record['answer']


def completion(record: dict, kind: str, tagged: bool, r1_prompt: bool,
               cfg: CorpusConfig, rng: random.Random) -> str:
  """The text after the prompt, starting with a space."""
  answer = answer_text(record)
  if kind == 'direct':
    if tagged:
      thought = rng.choice(cfg.direct_thoughts)
      return f' <think> {thought} </think> <answer> {answer} </answer>'
    return f' The answer is {answer}.' if r1_prompt else f' {answer}'
  steps = list(record['solution_steps'])
  carrier = list(range(len(steps)))  # the sentence holding step k's result
  if kind == 'checked':
    steps = checked_steps(steps, cfg.p_slip, rng)
  elif kind == 'self_correct':
    fixed = self_correcting_steps(steps, rng)
    j = next(i for i, (a, b) in enumerate(zip(steps, fixed)) if a != b)
    carrier = [k if k < j else k + 1 for k in carrier]
    steps = fixed
  rest = remainders(record) if cfg.restate else None
  if rest:
    for k, r in enumerate(rest):
      if r:
        steps[carrier[k]] += f', so {r}'
  if tagged:
    return f' <think> {_sentences(steps)} </think> <answer> {answer} </answer>'
  return f" Let's compute step by step. {_sentences(steps)} The answer is {answer}."


def drill_completion(task: str, cfg: CorpusConfig, problem_seed: int,
                     i: int, rng: random.Random) -> str:
  """' a op b = c. ...': the steps of a few other train problems."""
  n = rng.randint(*cfg.drill_facts)
  facts: list[str] = []
  j = 0
  while len(facts) < n:
    record = synthetic.sample_problem(task, problem_seed, 'train',
                                      (i + 1) * 1_000 + j,
                                      **cfg.difficulty.get(task, {}))
    facts.extend(record['solution_steps'])
    j += 1
  return ' ' + _sentences(facts[:n])


# ----------------------------------------------------------------------------
# Documents
# ----------------------------------------------------------------------------


def corpus_records(cfg: CorpusConfig, n_docs: int, seed: int) -> list[dict]:
  """`n_docs` documents as dicts, deterministic in (cfg, seed).

  Keys: text (= prompt + completion), prompt, completion, kind ('direct',
  'steps', 'self_correct', 'checked', 'drill'), format ('r1', 'r1_untagged', 'plain'), task,
  problem, answer, and example (the synthetic record, e.g. for rewards).
  Document i depends only on (cfg, seed, i).
  """
  cfg.validate()
  tasks = list(cfg.task_weights)
  weights = [cfg.task_weights[t] for t in tasks]
  p_direct_r1 = cfg.p_direct if cfg.p_direct_r1 is None else cfg.p_direct_r1
  # Problems are drawn from a stream of their own, so two corpora with
  # different mixture knobs but one seed share their problems.
  problem_seed = synthetic.stable_hash('corpus', seed)
  docs = []
  for i in range(n_docs):
    rng = random.Random(synthetic.stable_hash('corpus-doc', seed, i))
    task = rng.choices(tasks, weights)[0]
    record = synthetic.sample_problem(task, problem_seed, 'train', i,
                                      **cfg.difficulty.get(task, {}))
    record.pop('_key')
    if cfg.p_drill and random.Random(synthetic.stable_hash(
        'corpus-drill', seed, i)).random() < cfg.p_drill:
      text = drill_completion(task, cfg, problem_seed, i, rng)
      docs.append(dict(text=text.lstrip(), prompt='', completion=text,
                       kind='drill', format='plain', task=task,
                       problem='', answer='', example=record))
      continue
    r1_prompt = rng.random() < cfg.p_r1_prompt
    direct = rng.random() < (p_direct_r1 if r1_prompt else cfg.p_direct)
    if direct:
      kind = 'direct'
    else:
      kind = 'self_correct' if rng.random() < cfg.p_self_correct else 'steps'
      if kind == 'steps' and cfg.p_check and random.Random(
          synthetic.stable_hash('corpus-check', seed, i)).random() < cfg.p_check:
        kind = 'checked'
    tagged = r1_prompt and rng.random() < cfg.p_r1_tags
    if r1_prompt:
      prompt = render_prompt(cfg.r1_template, record['problem'])
      fmt = 'r1' if tagged else 'r1_untagged'
    else:
      prompt = rng.choice(cfg.plain_prompts).format(problem=record['problem'])
      fmt = 'plain'
    text = completion(record, kind, tagged, r1_prompt, cfg, rng)
    docs.append(dict(text=prompt + text, prompt=prompt, completion=text,
                     kind=kind, format=fmt, task=task,
                     problem=record['problem'], answer=record['answer'],
                     example=record))
  return docs


def corpus_documents(cfg: CorpusConfig, n_docs: int, seed: int) -> list[str]:
  """`n_docs` pretraining documents (prompt + completion, no EOS)."""
  return [d['text'] for d in corpus_records(cfg, n_docs, seed)]


def tokenizer_training_texts(cfg: CorpusConfig, n_docs: int = 20_000,
                             seed: int = 1) -> list[str]:
  """Texts to train the tiny model's BPE on: the corpus distribution plus
  every registered prompt template, so template words get merges."""
  texts = corpus_documents(cfg, n_docs, seed)
  for name in templates.TEMPLATES.names():
    try:
      texts.append(templates.render_prompt(name, 'Compute 1 + 2.'))
    except Exception:  # pylint: disable=broad-except
      pass  # A template that needs a tokenizer (chat) has nothing to add.
  return texts

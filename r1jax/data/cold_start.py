"""Cold-start SFT examples from reference solutions (GSM8K, MATH).

DeepSeek-R1 starts its RL from a model fine-tuned on a few thousand readable
chain-of-thought examples. Without a strong model to write those, the reference
solutions of GSM8K and MATH are the next best thing: they are short, correct
and readable. This module rewrites them into the R1 output format:

    <think>
    {reasoning}
    </think>
    <answer>
    {answer}
    </answer>

GSM8K loses its calculator annotations (`<<16-3-4=9>>`) and its `#### N` line
(the number goes into the answer block); MATH solutions keep their LaTeX and
the gold answer (the solution's last \\boxed{}) goes into the answer block.
The `summary` style instead follows R1's readable format, a think block then a
short summary that states the answer in \\boxed{}.

    from r1jax.data.builders import load_dataset
    examples = cold_start_examples(load_dataset('gsm8k', 'train'), 'gsm8k')
    write_jsonl(examples, 'cold_start_gsm8k.jsonl')

or from the shell:

    python -m r1jax.data.cold_start --dataset=gsm8k --split=train --out=cs.jsonl
"""

import argparse
import json
import os
import random
import re
from typing import Iterable, Mapping, Sequence

from r1jax.data import corpus
from r1jax.data import synthetic
from r1jax.data import templates

_CALC_RE = re.compile(r'<<[^<>]*>>')
_HASHES_RE = re.compile(r'\n?\s*####[^\n]*\s*$')
STYLES = ('tags', 'summary')


def gsm8k_reasoning(solution: str) -> str:
  """A GSM8K solution without calculator annotations and the `#### N` line."""
  text = _CALC_RE.sub('', solution)
  text = _HASHES_RE.sub('', text)
  return text.strip()


def math_reasoning(solution: str) -> str:
  """A MATH solution as it is (LaTeX kept), whitespace trimmed."""
  return solution.strip()


# Which cleaner each dataset's `source` field takes; AIME solutions are prose
# with LaTeX like MATH.
REASONING = {
    'gsm8k': gsm8k_reasoning,
    'math': math_reasoning,
    'math500': math_reasoning,
    'aime24': math_reasoning,
}


def format_completion(reasoning: str, answer: str, style: str = 'tags',
                      opens_think: bool = False) -> str:
  """The target text for one example.

  Args:
    reasoning: the chain of thought.
    answer: the final answer.
    style: 'tags' (<think> + <answer> blocks, the R1-Zero format) or
      'summary' (<think> block, then a one-line summary with \\boxed{answer}).
    opens_think: the prompt already ends with `<think>`; leave it out.
  """
  if style == 'tags':
    tail = f'<answer>\n{answer}\n</answer>'
  elif style == 'summary':
    tail = f'The final answer is $\\boxed{{{answer}}}$.'
  else:
    raise ValueError(f'Unknown style {style!r}; known: {STYLES}')
  head = '' if opens_think else '<think>'
  return f'{head}\n{reasoning}\n</think>\n{tail}'


def cold_start_examples(records: Iterable[Mapping[str, str]], source: str,
                        template: str = 'r1_zero', tokenizer=None,
                        style: str = 'tags', **template_kw
                        ) -> list[dict[str, str]]:
  """SFT examples {prompt, completion, answer, id} from reference solutions.

  Args:
    records: dicts with `problem`, `solution` and `answer` (as `load_dataset`
      returns them).
    source: 'gsm8k' or 'math' (also 'math500', 'aime24'): how to clean the
      solution.
    template: prompt template name (see `templates.TEMPLATES`); a template
      that opens the think block gets completions without `<think>`.
    tokenizer: needed by chat templates only.
    style: 'tags' or 'summary' (see `format_completion`).
    **template_kw: passed to `render_prompt` (e.g. `system=`).

  Returns:
    One dict per record; `prompt + completion` is the full training text.

  Raises:
    KeyError: unknown source. ValueError: a record without a solution.
  """
  if source not in REASONING:
    raise KeyError(f'No cold-start cleaner for {source!r}; known: '
                   f'{sorted(REASONING)}')
  clean = REASONING[source]
  tmpl = templates.get_template(template)
  examples = []
  for rec in records:
    if not rec.get('solution', '').strip():
      raise ValueError(f'Record {rec.get("id", "?")} has no reference '
                       'solution to turn into a chain of thought.')
    completion = format_completion(clean(rec['solution']), rec['answer'],
                                   style, tmpl.opens_think)
    examples.append(dict(
        id=rec.get('id', ''),
        prompt=tmpl.render(rec['problem'], tokenizer, **template_kw),
        completion=tmpl.completion_prefix + completion,
        answer=rec['answer']))
  return examples


# The connecting words of a synthetic chain of thought, per language:
# (first step, later steps, the closing summary before the answer, the word
# before what is left to compute).
CONNECTIVES = {
    'en': ('First,', 'Then,', 'So the answer is', 'so'),
    'ru': ('сперва', 'затем', 'итак, ответ', 'значит'),
}
# Without step connectives (`connectives=False`): the word before what is
# left and the summary's, short ones. The tiny base's tokenizer never saw
# Cyrillic (2-3 tokens a letter): 'значит' is 13 tokens, 'то' 5.
COMPACT = {
    'en': ('so', 'So the answer is'),
    'ru': ('то', 'ответ'),
}
# COMPACT in CONNECTIVES' layout: no word before a step.
_COMPACT_WORDS = {lang: ('', '', summary, so)
                  for lang, (so, summary) in COMPACT.items()}


def synthetic_trace(steps: Sequence[str], answer: str, language: str,
                    rng=None, p_mixed: float = 0.0,
                    rest: Sequence[str | None] | None = None,
                    connectives: bool = True) -> str:
  """A readable chain of thought for a synthetic problem, with a summary:

      <think> First, 9 - 2 = 7. Then, 7 + 5 = 12. So the answer is 12.
      </think> <answer> 12 </answer>   (one line)

  `rest` (per step, the expression left after it, or None) restates it
  after the step, as the tiny base's corpus does ('First, 9 - 2 = 7, so
  7 + 5.'; `corpus.remainders`): the next step's operands are then next to
  it. `connectives=False` leaves out 'First,' and 'Then,' (the base's own
  steps, '9 - 2 = 7, so 7 + 5.') and uses `COMPACT`'s shorter words. With
  `p_mixed` > 0 each connective is, with that probability, written in
  English instead of `language`: the language mixing that R1's language
  reward removes.
  """
  words = CONNECTIVES if connectives else _COMPACT_WORDS
  own = words[language]
  pick = lambda i: (words['en'][i] if rng is not None and
                    rng.random() < p_mixed else own[i])
  parts = []
  for j, step in enumerate(steps):
    left = rest[j] if rest else None
    tail = f', {pick(3)} {left}' if left else ''
    lead = pick(0 if j == 0 else 1)
    parts.append(f'{lead} {step}{tail}.' if lead else f'{step}{tail}.')
  parts.append(f'{pick(2)} {answer}.')
  return f'<think> {" ".join(parts)} </think> <answer> {answer} </answer>'


def _remainders(rec: Mapping) -> list[str | None] | None:
  """`corpus.remainders` of a record asked in any language."""
  lang = rec.get('target_language') or 'en'
  problem = rec['problem']
  prefix = synthetic.PROBLEM_PREFIX.get(lang, '')
  if lang != 'en' and problem.startswith(prefix):
    problem = synthetic.PROBLEM_PREFIX['en'] + problem[len(prefix):]
  return corpus.remainders({**rec, 'problem': problem})


def synthetic_examples(records: Iterable[Mapping], template: str,
                       p_mixed: float = 0.0, seed: int = 0,
                       tokenizer=None, restate: bool = False,
                       connectives: bool = True) -> list[dict[str, str]]:
  """Cold-start SFT examples for synthetic problems (`solution_steps`).

  A record's `target_language` (see `synthetic.localize`) sets the language
  of its connectives; English ones are never mixed. `restate`: each step is
  followed by what is left to compute (`synthetic_trace`'s `rest`);
  `connectives=False`: no 'First,' / 'Then,' (`synthetic_trace`).
  """
  tmpl = templates.get_template(template)
  out = []
  for rec in records:
    lang = rec.get('target_language') or 'en'
    if lang not in CONNECTIVES:
      raise ValueError(f'record {rec.get("id")}: no connectives for language '
                       f'{lang!r}; known: {sorted(CONNECTIVES)}')
    rng = random.Random(synthetic.stable_hash('cold-start', seed, rec['id']))
    trace = synthetic_trace(rec['solution_steps'], rec['answer'], lang, rng,
                            p_mixed if lang != 'en' else 0.0,
                            rest=_remainders(rec) if restate else None,
                            connectives=connectives)
    out.append(dict(id=rec['id'], prompt=tmpl.render(rec['problem'], tokenizer),
                    completion=tmpl.completion_prefix + trace,
                    answer=rec['answer']))
  return out


def write_jsonl(examples: Iterable[Mapping], path: str | os.PathLike) -> int:
  """Writes one JSON object per line (UTF-8, not ASCII-escaped); the count."""
  n = 0
  with open(path, 'w', encoding='utf-8') as f:
    for ex in examples:
      f.write(json.dumps(ex, ensure_ascii=False) + '\n')
      n += 1
  return n


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def main(argv: Sequence[str]) -> None:
  """Writes cold-start examples of one dataset split as JSONL."""
  from r1jax.data import builders  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument('--dataset', default='gsm8k')
  parser.add_argument('--split', default='train')
  parser.add_argument('--template', default='r1_zero')
  parser.add_argument('--style', default='tags', choices=STYLES)
  parser.add_argument('--out', required=True)
  parser.add_argument('--local_dir', default=None)
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args(argv)
  records = builders.load_dataset(args.dataset, args.split, args.data_dir,
                                  args.local_dir)
  source = 'math' if args.dataset == 'math500' else args.dataset
  examples = cold_start_examples(records, source, args.template,
                                 style=args.style)
  n = write_jsonl(examples, args.out)
  print(f'wrote {n} examples to {args.out}')


if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top
  main(sys.argv[1:])

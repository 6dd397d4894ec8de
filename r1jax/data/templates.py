"""Prompt templates: how a problem becomes the text a model continues.

    render_prompt('r1_zero', 'What is 2+3?')
    prompt_ids('chat_boxed', problem, tokenizer)   # through the chat template

Registered templates (`TEMPLATES`):
  r1_zero        the DeepSeek-R1-Zero template, verbatim from the paper
                 (arXiv:2501.12948, Table 1); ends with "Assistant:".
  r1_zero_think  the same, ending with "Assistant: <think>": the prompt opens
                 the think block, so completions start inside it.
  r1_zero_short  the R1-Zero template's structure in one sentence (~25 tokens
                 instead of ~90), for the tiny CPU models, whose pretraining
                 compute would otherwise go mostly to the template.
  plain          "Question: ...\\nAnswer:" for the tiny CPU models.
  plain_steps    the same, answer opened with "Let's compute step by step."
                 (the base-model ability check asks for steps with it).
  chat           the tokenizer's chat template with one user turn; `system=`
                 and `instruction=` (appended to the problem) are optional.
  chat_boxed     chat with the step-by-step / \\boxed{} instruction that the
                 DeepSeek-R1 distilled models recommend, in the user turn.
  qwen_math      chat with that instruction as the system prompt, as
                 Qwen2.5-Math-Instruct is evaluated.

A completion is appended to the prompt with `completion_prefix` (a space after
"Assistant:", nothing after a chat generation prompt), so that the prompt
plus completion reads as one text.

Few-shot prompts (`shots=`, the evaluation's `eval.few_shot`): worked
examples, each a dict with `problem`, `reasoning` and `answer`, go in front
of the problem in the template's own style. A text template writes its
header once and repeats its turn (the text from `turn_start` on, e.g.
"User: {prompt}. Assistant:") per example, each followed by the worked
answer; a chat template gets alternating user / assistant turns. The worked
answer follows `answer_style`: 'tags' (the R1-Zero templates:
"<think> reasoning </think> <answer> 7 </answer>"), 'plain'
("reasoning The answer is 7.") or 'boxed' (chat: "reasoning\\nThe final
answer is $\\boxed{7}$."). No shots is the zero-shot prompt exactly.

    prompt_ids('r1_zero', problem, tokenizer, shots=[
        {'problem': 'Compute 2 + 3', 'reasoning': 'First, 2 + 3 = 5.',
         'answer': '5'}])
    record_prompt_ids(template, record, tokenizer)   # with record['shots']

Code tasks (MBPP, HumanEval) go through the same templates: their problem
text (`mbpp_problem`, `humaneval_problem`) states the task, shows the tests
or the signature, and ends with `CODE_INSTRUCTION`: the answer is one fenced
```python block, which the `code` reward extracts and runs against the
record's tests.
"""

import dataclasses
from typing import Any, Mapping, Sequence

from r1jax.registry import Registry

# Table 1 of DeepSeek-R1 (arXiv v1); "prompt" is replaced with the question.
# The Nature version rewords it slightly ("The User asks a question and the
# Assistant solves it", "that is,"); r1jax follows the arXiv text.
R1_ZERO = (
    'A conversation between User and Assistant. The user asks a question, and '
    'the Assistant solves it. The assistant first thinks about the reasoning '
    'process in the mind and then provides the user with the answer. The '
    'reasoning process and answer are enclosed within <think> </think> and '
    '<answer> </answer> tags, respectively, i.e., <think> reasoning process '
    'here </think> <answer> answer here </answer>. User: {prompt}. Assistant:')

BOXED_INSTRUCTION = ('Please reason step by step, and put your final answer '
                     'within \\boxed{}.')

# The last line of every code problem: the answer is a fenced Python block.
CODE_INSTRUCTION = ('Write your solution as one complete Python program in a '
                    '```python code block.')


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
  """One way to turn a problem into a prompt.

  Attributes:
    text: a `str.format` pattern with a `{prompt}` field, or None to use the
      tokenizer's chat template.
    opens_think: the prompt ends inside an open `<think>` block, so
      completions (and cold-start targets) must not repeat `<think>`.
    completion_prefix: what goes between the prompt and the completion.
    system: default system prompt (chat templates only).
    instruction: default text appended to the problem on a new line.
    turn_start: where the turn a few-shot prompt repeats begins in `text`
      ('User:'); the text before it is the header, written once. None: the
      text template takes no shots.
    shot_separator: what follows each worked example's answer.
    answer_style: how a worked answer is written (`ANSWER_STYLES`).
  """
  text: str | None = None
  opens_think: bool = False
  completion_prefix: str = ''
  system: str | None = None
  instruction: str | None = None
  turn_start: str | None = None
  shot_separator: str = ' '
  answer_style: str = 'tags'

  @property
  def is_chat(self) -> bool:
    return self.text is None

  @property
  def takes_shots(self) -> bool:
    """Whether few-shot prompts can be written in this template."""
    return self.is_chat or (self.turn_start is not None and
                            self.turn_start in self.text)

  def worked_answer(self, shot: Mapping[str, str]) -> str:
    """What the model would write after the prompt for worked example
    `shot` ({problem, reasoning, answer}), in `answer_style`, without
    `completion_prefix`."""
    reasoning, answer = shot['reasoning'].strip(), shot['answer'].strip()
    if self.answer_style == 'tags':
      body = f'{reasoning} </think> <answer> {answer} </answer>'
      return f' {body}' if self.opens_think else f'<think> {body}'
    if self.answer_style == 'plain':
      return f'{reasoning} The answer is {answer}.'
    if self.answer_style == 'boxed':
      return f'{reasoning}\nThe final answer is $\\boxed{{{answer}}}$.'
    raise ValueError(f'Unknown answer style {self.answer_style!r}; known: '
                     f'{ANSWER_STYLES}')

  def messages(self, problem: str, system: str | None = None,
               instruction: str | None = None,
               shots: Sequence[Mapping[str, str]] = ()
               ) -> list[dict[str, str]]:
    """The chat turns for `problem` (system turn first when there is one),
    after a user / assistant pair per worked example in `shots`."""
    system = self.system if system is None else system
    content = _with_instruction(problem, self._instruction(instruction))
    turns = [{'role': 'system', 'content': system}] if system else []
    for shot in shots:
      turns += [{'role': 'user', 'content': _with_instruction(
                     shot['problem'], self._instruction(instruction))},
                {'role': 'assistant', 'content': self.worked_answer(shot)}]
    return turns + [{'role': 'user', 'content': content}]

  def render(self, problem: str, tokenizer=None, *, system: str | None = None,
             instruction: str | None = None,
             shots: Sequence[Mapping[str, str]] = ()) -> str:
    if self.is_chat:
      _need_tokenizer(tokenizer)
      return tokenizer.render_chat(
          self.messages(problem, system, instruction, shots))
    if system:
      raise ValueError('A system prompt needs a chat template; this template '
                       'is plain text.')
    problem = _with_instruction(problem, self._instruction(instruction))
    text = self.text.format(prompt=problem)
    if not shots:
      return text
    if not self.takes_shots:
      raise ValueError('This text template has no turn to repeat '
                       '(turn_start): it takes no few-shot examples.')
    # The header holds no {prompt} field: it is the same text in `text`
    # and in the formatted prompt.
    header = self.text[:self.text.index(self.turn_start)]
    turn = self.text[len(header):]
    examples = ''.join(
        turn.format(prompt=_with_instruction(
            s['problem'], self._instruction(instruction)))
        + self.completion_prefix + self.worked_answer(s) + self.shot_separator
        for s in shots)
    return header + examples + text[len(header):]

  def ids(self, problem: str, tokenizer, *, system: str | None = None,
          instruction: str | None = None,
          shots: Sequence[Mapping[str, str]] = ()) -> list[int]:
    _need_tokenizer(tokenizer)
    if self.is_chat:
      return tokenizer.apply_chat_template(
          self.messages(problem, system, instruction, shots))
    return tokenizer.encode(self.render(problem, instruction=instruction,
                                        shots=shots))

  def _instruction(self, instruction: str | None) -> str | None:
    return self.instruction if instruction is None else instruction


# How a worked example's answer is written (`PromptTemplate.answer_style`).
ANSWER_STYLES = ('tags', 'plain', 'boxed')


def _with_instruction(problem: str, instruction: str | None) -> str:
  # Raw problems sometimes end in a newline; the R1 template puts "." right
  # after the problem, so surrounding whitespace is dropped.
  problem = problem.strip()
  return f'{problem}\n{instruction}' if instruction else problem


def _need_tokenizer(tokenizer) -> None:
  if tokenizer is None:
    raise ValueError('This template needs a tokenizer (chat template / ids).')


TEMPLATES = Registry('prompt template')
# Few-shot prompts repeat the R1 templates from 'User:' on, the plain ones
# from 'Question:' on.
_R1_TURNS = dict(turn_start='User:', shot_separator=' ', answer_style='tags')
_PLAIN_TURNS = dict(turn_start='Question:', shot_separator='\n\n',
                    answer_style='plain')
TEMPLATES.add('r1_zero', PromptTemplate(R1_ZERO, completion_prefix=' ',
                                        **_R1_TURNS))
TEMPLATES.add('r1_zero_think', PromptTemplate(R1_ZERO + ' <think>',
                                              opens_think=True, **_R1_TURNS))
# The same contract as R1_ZERO (User/Assistant, <think> and <answer> tags),
# short enough that a 2M-parameter model's compute goes to the problem.
R1_ZERO_SHORT = (
    'A conversation between User and Assistant. The Assistant reasons within '
    '<think> </think> and answers within <answer> </answer>. User: {prompt}. '
    'Assistant:')
TEMPLATES.add('r1_zero_short', PromptTemplate(R1_ZERO_SHORT,
                                              completion_prefix=' ',
                                              **_R1_TURNS))
TEMPLATES.add('plain', PromptTemplate('Question: {prompt}\nAnswer:',
                                      completion_prefix=' ', **_PLAIN_TURNS))
# A plain prompt that asks for steps (the tiny corpus's step-by-step opening):
# what the base model can do when asked, as opposed to what it chooses to do.
TEMPLATES.add('plain_steps', PromptTemplate(
    "Question: {prompt}\nAnswer: Let's compute step by step.",
    completion_prefix=' ', **_PLAIN_TURNS))
# Chat templates' worked answers end in \boxed{}, which the math reward reads.
TEMPLATES.add('chat', PromptTemplate(answer_style='boxed'))
TEMPLATES.add('chat_boxed', PromptTemplate(instruction=BOXED_INSTRUCTION,
                                           answer_style='boxed'))
TEMPLATES.add('qwen_math', PromptTemplate(system=BOXED_INSTRUCTION,
                                          answer_style='boxed'))


def get_template(template: str | PromptTemplate) -> PromptTemplate:
  """A registered template by name (or the template itself)."""
  if isinstance(template, PromptTemplate):
    return template
  return TEMPLATES.get(template)


def render_prompt(template: str | PromptTemplate, problem: str, tokenizer=None,
                  **kw: Any) -> str:
  """The prompt text for `problem` (`system=`, `instruction=` optional)."""
  return get_template(template).render(problem, tokenizer, **kw)


def prompt_ids(template: str | PromptTemplate, problem: str, tokenizer,
               **kw: Any) -> list[int]:
  """Prompt token ids; chat templates go through `apply_chat_template`."""
  return get_template(template).ids(problem, tokenizer, **kw)


def record_prompt_ids(template: str | PromptTemplate, record: Mapping[str, Any],
                      tokenizer) -> list[int]:
  """The prompt ids of a data set record: its `problem`, after its worked
  examples (`shots`, set by the few-shot evaluation) when it has any."""
  shots = record.get('shots') or ()
  if not shots:
    return prompt_ids(template, record['problem'], tokenizer)
  return prompt_ids(template, record['problem'], tokenizer, shots=shots)


def mbpp_problem(text: str, tests: list[str]) -> str:
  """An MBPP task as a problem: the task, its tests (they fix the function's
  name and signature, as in Austin et al. 2021), the code instruction."""
  shown = '\n'.join(t.strip() for t in tests)
  return (f'{text.strip()} Your code should pass these tests:\n{shown}\n'
          f'{CODE_INSTRUCTION}')


def humaneval_problem(prompt: str, entry_point: str) -> str:
  """A HumanEval task as a problem: the signature and docstring to complete,
  as a code block, then the code instruction."""
  return (f'Complete the Python function `{entry_point}`:\n```python\n'
          f'{prompt.strip()}\n```\nInclude the whole function and the '
          f'imports and helpers it needs. {CODE_INSTRUCTION}')

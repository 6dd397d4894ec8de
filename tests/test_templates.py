"""Prompt templates: the R1-Zero text verbatim, think variant, chat turns."""

import pytest

from r1jax.data import templates
from r1jax.data.templates import TEMPLATES, prompt_ids, render_prompt
from r1jax.tokenizer import train_bpe

# DeepSeek-R1 (arXiv:2501.12948) Table 1, with "prompt" replaced by a question.
PAPER_R1_ZERO_FILLED = (
    'A conversation between User and Assistant. The user asks a question, and '
    'the Assistant solves it. The assistant first thinks about the reasoning '
    'process in the mind and then provides the user with the answer. The '
    'reasoning process and answer are enclosed within <think> </think> and '
    '<answer> </answer> tags, respectively, i.e., <think> reasoning process '
    'here </think> <answer> answer here </answer>. User: What is 2 + 3 * 4?. '
    'Assistant:')

QWEN_LIKE_CHAT_TEMPLATE = (
    '{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}'
    '<|im_end|>\n{% endfor %}'
    '{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}')


@pytest.fixture(scope='module')
def tokenizer():
  texts = ['What is 2 + 3 * 4? Question: Answer: A conversation between User '
           'and Assistant. Please reason step by step.'] * 20
  return train_bpe(texts, vocab_size=300,
                   special_tokens=('<|endoftext|>', '<|im_start|>',
                                   '<|im_end|>'),
                   config={'chat_template': QWEN_LIKE_CHAT_TEMPLATE})


def test_registry_names():
  assert set(TEMPLATES.names()) >= {'r1_zero', 'r1_zero_think', 'plain',
                                    'chat', 'chat_boxed', 'qwen_math'}
  with pytest.raises(KeyError, match='r1_zero'):
    render_prompt('r2_zero', 'x')


def test_r1_zero_is_the_paper_text():
  assert render_prompt('r1_zero', 'What is 2 + 3 * 4?') == PAPER_R1_ZERO_FILLED
  # Surrounding whitespace of raw problems does not leak into the template.
  assert render_prompt('r1_zero', '\n What is 2 + 3 * 4? \n') == (
      PAPER_R1_ZERO_FILLED)
  assert not TEMPLATES.get('r1_zero').opens_think


def test_r1_zero_think_opens_the_think_block():
  text = render_prompt('r1_zero_think', 'What is 2 + 3 * 4?')
  assert text == PAPER_R1_ZERO_FILLED + ' <think>'
  assert text.endswith('Assistant: <think>')
  assert TEMPLATES.get('r1_zero_think').opens_think
  # Prompt plus completion read the same for both R1 templates.
  r1, think = TEMPLATES.get('r1_zero'), TEMPLATES.get('r1_zero_think')
  body = '\nreason\n</think>\n<answer>\n14\n</answer>'
  assert (render_prompt('r1_zero', 'q') + r1.completion_prefix + '<think>' +
          body) == (render_prompt('r1_zero_think', 'q') +
                    think.completion_prefix + body)


def test_latex_braces_survive_formatting():
  problem = 'Simplify $\\frac{1}{2} + \\{x\\}$ and {prompt}.'
  assert problem in render_prompt('r1_zero', problem)
  assert render_prompt('plain', problem) == f'Question: {problem}\nAnswer:'


def test_plain_and_instruction():
  assert render_prompt('plain', '1+2') == 'Question: 1+2\nAnswer:'
  assert render_prompt('plain', '1+2', instruction='Be brief.') == (
      'Question: 1+2\nBe brief.\nAnswer:')
  with pytest.raises(ValueError, match='chat template'):
    render_prompt('plain', '1+2', system='You are helpful.')


def test_chat_needs_a_tokenizer():
  with pytest.raises(ValueError, match='tokenizer'):
    render_prompt('chat', 'x')


def test_chat_templates(tokenizer):
  assert render_prompt('chat', 'What is 1+1?', tokenizer) == (
      '<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n')
  assert render_prompt('chat', 'Q', tokenizer, system='Be kind.') == (
      '<|im_start|>system\nBe kind.<|im_end|>\n'
      '<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n')
  boxed = ('Please reason step by step, and put your final answer within '
           '\\boxed{}.')
  assert render_prompt('chat_boxed', 'Q', tokenizer) == (
      f'<|im_start|>user\nQ\n{boxed}<|im_end|>\n<|im_start|>assistant\n')
  assert render_prompt('qwen_math', 'Q', tokenizer) == (
      f'<|im_start|>system\n{boxed}<|im_end|>\n'
      '<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n')


def test_prompt_ids(tokenizer):
  ids = prompt_ids('r1_zero', 'What is 2 + 3 * 4?', tokenizer)
  assert ids == tokenizer.encode(PAPER_R1_ZERO_FILLED)
  assert tokenizer.decode(ids) == PAPER_R1_ZERO_FILLED
  chat = prompt_ids('chat_boxed', 'Q', tokenizer)
  assert chat == tokenizer.apply_chat_template(
      [{'role': 'user', 'content': 'Q\n' + templates.BOXED_INSTRUCTION}])
  # Control tokens of the chat template are single ids.
  assert chat[0] == tokenizer.token_id('<|im_start|>')
  assert chat.count(tokenizer.token_id('<|im_end|>')) == 1


def test_custom_template_object():
  tmpl = templates.PromptTemplate('Q: {prompt}\nA:', completion_prefix=' ')
  assert render_prompt(tmpl, 'x') == 'Q: x\nA:'

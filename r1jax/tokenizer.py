"""One tokenizer wrapper over Hugging Face `tokenizers` tokenizer.json files.

Real checkpoints (Qwen2.5, Llama 3, SmolLM2, GGUF-derived) and the tiny CPU
models go through the same class: the tiny models use a byte-level BPE trained
with the same library (`train_bpe`) and saved as tokenizer.json.

    tok = Tokenizer.from_dir('path/to/hf_model')
    ids_BxT, mask_BxT = tok.batch_encode(['1+1=', 'Hello'], buckets=(16, 32))
    prompt_ids = tok.apply_chat_template([{'role': 'user', 'content': 'Hi'}])
"""

import json
import os
import pathlib
from typing import Iterable, Mapping, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from r1jax import atomic

# Names under which special tokens commonly appear in vocabularies, in order of
# preference. tokenizer_config.json, when present, wins over these guesses.
_BOS_CANDIDATES = ('<|begin_of_text|>', '<s>', '<|endoftext|>', '<bos>')
_EOS_CANDIDATES = ('<|im_end|>', '<|eot_id|>', '<|endoftext|>', '</s>', '<eos>',
                   '<|end_of_text|>')
# Tokens that end an assistant turn or a document in common vocabularies: a
# completion stops at any of them that the vocabulary has (`stop_ids`).
END_TOKENS = ('<|im_end|>', '<|eot_id|>', '<|endoftext|>', '<|end_of_text|>',
              '<|eom_id|>', '</s>', '<｜end▁of▁sentence｜>')
_PAD_CANDIDATES = ('<|pad|>', '<pad>', '<|endoftext|>', '<|finetune_right_pad_id|>')

# Chat formats for tokenizers without a Jinja chat template of their own.
CHAT_FORMATS = {
    'chatml': dict(turn='<|im_start|>{role}\n{content}<|im_end|>\n',
                   generation='<|im_start|>assistant\n', bos=False),
    'llama3': dict(
        turn='<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>',
        generation='<|start_header_id|>assistant<|end_header_id|>\n\n',
        bos=True),
    'plain': dict(turn='{role}: {content}\n', generation='assistant:', bos=True),
}


def _token_content(value) -> str | None:
  if value is None:
    return None
  if isinstance(value, Mapping):
    return value.get('content')
  return str(value)


class Tokenizer:
  """Encode / decode, special tokens, bucketed left-padded batches, templates."""

  def __init__(self, tok: tokenizers.Tokenizer, config: Mapping | None = None):
    self.tok = tok
    self.config = dict(config or {})
    vocab = tok.get_vocab(with_added_tokens=True)

    def pick(key, candidates):
      name = _token_content(self.config.get(key))
      if name is not None and name in vocab:
        return vocab[name]
      for c in candidates:
        if c in vocab:
          return vocab[c]
      return None

    self.bos_id = pick('bos_token', _BOS_CANDIDATES)
    self.eos_id = pick('eos_token', _EOS_CANDIDATES)
    self.pad_id = pick('pad_token', _PAD_CANDIDATES)
    if self.pad_id is None:
      self.pad_id = self.eos_id if self.eos_id is not None else 0
    self.think_id = vocab.get('<think>')
    self.think_end_id = vocab.get('</think>')
    self.chat_template = self.config.get('chat_template')
    self.chat_format = self.config.get('chat_format')
    self.add_bos = bool(self.config.get('add_bos_token', False))

  # --------------------------------------------------------------- loading
  @classmethod
  def from_file(cls, path: str | os.PathLike,
                config: Mapping | None = None) -> 'Tokenizer':
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f'No tokenizer file at {path}')
    return cls(tokenizers.Tokenizer.from_file(str(path)), config)

  @classmethod
  def from_dir(cls, path: str | os.PathLike) -> 'Tokenizer':
    """tokenizer.json plus, when present, tokenizer_config.json."""
    path = pathlib.Path(path)
    cfg_path = path / 'tokenizer_config.json'
    config = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    return cls.from_file(path / 'tokenizer.json', config)

  def save(self, path: str | os.PathLike) -> None:
    """Writes tokenizer.json and tokenizer_config.json into directory `path`
    (each atomically: a run killed while saving leaves no part of a file)."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path / 'tokenizer.json', self.tok.to_str(pretty=True))
    config = dict(self.config)
    for key, idx in (('bos_token', self.bos_id), ('eos_token', self.eos_id),
                     ('pad_token', self.pad_id)):
      if idx is not None:
        config[key] = self.tok.id_to_token(idx)
    atomic.write_text(path / 'tokenizer_config.json',
                      json.dumps(config, indent=1))

  # ------------------------------------------------------------- basics
  @property
  def vocab_size(self) -> int:
    return self.tok.get_vocab_size(with_added_tokens=True)

  def token_id(self, token: str) -> int | None:
    return self.tok.token_to_id(token)

  def stop_ids(self) -> list[int]:
    """The tokens a completion stops at, the one rule of every sampler
    (training, evaluation, generation): eos plus each END_TOKENS entry the
    vocabulary has."""
    ids = {self.token_id(t) for t in END_TOKENS}
    ids.add(self.eos_id)
    return sorted(i for i in ids if i is not None)

  def decode_completions(self, tokens_BxL, lengths_B, stopped_B) -> list[str]:
    """The text of each sampled completion: its first lengths_B[i] tokens,
    without the stop token that ended it (where stopped_B[i]), the one
    decoding of every sampler caller."""
    return [self.decode(t[:int(n) - bool(s)])
            for t, n, s in zip(tokens_BxL, lengths_B, stopped_B)]

  def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
    ids = self.tok.encode(text, add_special_tokens=False).ids
    if add_bos is None:
      add_bos = self.add_bos
    if add_bos and self.bos_id is not None:
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    return self.tok.decode([int(i) for i in ids],
                           skip_special_tokens=skip_special_tokens)

  # ------------------------------------------------------------- batches
  def pad_batch(self, seqs: Sequence[Sequence[int]],
                buckets: Sequence[int] | None = None, left: bool = True,
                truncate: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Pads id lists to the smallest bucket that fits the longest.

    Returns (ids_BxT int32, mask_BxT bool). With `left` the real tokens sit at
    the right end, as the sampler wants for prompts. A sequence longer than the
    largest bucket raises, unless `truncate` keeps its last tokens (left) or
    first tokens (right).
    """
    longest = max((len(s) for s in seqs), default=1)
    length = bucket_length(longest, buckets, truncate=truncate)
    ids = np.full((len(seqs), length), self.pad_id, np.int32)
    mask = np.zeros((len(seqs), length), np.bool_)
    for i, s in enumerate(seqs):
      s = list(s)[-length:] if left else list(s)[:length]
      if left:
        ids[i, length - len(s):] = s
        mask[i, length - len(s):] = True
      else:
        ids[i, :len(s)] = s
        mask[i, :len(s)] = True
    return ids, mask

  def batch_encode(self, texts: Sequence[str], buckets: Sequence[int] | None = None,
                   left: bool = True, add_bos: bool | None = None,
                   truncate: bool = False) -> tuple[np.ndarray, np.ndarray]:
    return self.pad_batch([self.encode(t, add_bos) for t in texts], buckets,
                          left=left, truncate=truncate)

  # ----------------------------------------------------------- templates
  def render_chat(self, messages: Sequence[Mapping[str, str]],
                  add_generation_prompt: bool = True) -> str:
    """The chat as text: the tokenizer's Jinja template, else a named format."""
    if self.chat_template and not self.chat_format:
      import jinja2  # pylint: disable=g-import-not-at-top
      env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
      env.globals['raise_exception'] = _raise
      template = env.from_string(self.chat_template)
      special = {k: _token_content(self.config.get(k)) or ''
                 for k in ('bos_token', 'eos_token')}
      return template.render(messages=list(messages),
                             add_generation_prompt=add_generation_prompt,
                             **special)
    fmt_name = self.chat_format or 'plain'
    if fmt_name not in CHAT_FORMATS:
      raise KeyError(f'Unknown chat format {fmt_name!r}; known: {sorted(CHAT_FORMATS)}')
    fmt = CHAT_FORMATS[fmt_name]
    text = ''.join(fmt['turn'].format(**m) for m in messages)
    if add_generation_prompt:
      text += fmt['generation']
    return text

  def apply_chat_template(self, messages: Sequence[Mapping[str, str]],
                          add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a chat, ready for generation of the assistant turn."""
    text = self.render_chat(messages, add_generation_prompt)
    fmt = CHAT_FORMATS.get(self.chat_format or '', {})
    add_bos = fmt.get('bos', False) if self.chat_format else False
    if self.bos_id is not None and not add_bos and not self.chat_format:
      bos = self.tok.id_to_token(self.bos_id)
      add_bos = self.add_bos and not text.startswith(bos)
    return self.encode(text, add_bos=add_bos)


def _raise(message):
  raise ValueError(message)


def bucket_length(n: int, buckets: Sequence[int] | None,
                  truncate: bool = False) -> int:
  """The smallest bucket >= n (n itself when there are no buckets)."""
  if not buckets:
    return n
  for b in sorted(buckets):
    if b >= n:
      return b
  if truncate:
    return max(buckets)
  raise ValueError(f'Sequence of {n} tokens exceeds the largest bucket '
                   f'{max(buckets)}; add a bucket or enable truncation.')


def train_bpe(texts: Iterable[str], vocab_size: int,
              special_tokens: Sequence[str] = ('<|endoftext|>', '<|pad|>'),
              added_tokens: Sequence[str] = ('<think>', '</think>', '<answer>',
                                             '</answer>'),
              individual_digits: bool = True,
              config: Mapping | None = None) -> Tokenizer:
  """Trains a byte-level BPE tokenizer (the tiny CPU models' tokenizer).

  `special_tokens` are control tokens (dropped by `decode`); `added_tokens` are
  single tokens that stay in decoded text (the R1 tags, which rewards read).
  Digits are split one per token when `individual_digits`, which makes
  multi-digit arithmetic learnable for small models.
  """
  tok = tokenizers.Tokenizer(models.BPE())
  pre = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
  if individual_digits:
    pre.insert(0, pre_tokenizers.Digits(individual_digits=True))
  tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
  tok.decoder = decoders.ByteLevel()
  # The added tokens come on top of the trained vocabulary; keep the total at
  # `vocab_size` so it fits a model of that vocabulary.
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size - len(added_tokens), special_tokens=list(special_tokens),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  if added_tokens:
    tok.add_tokens([tokenizers.AddedToken(t, normalized=False)
                    for t in added_tokens])
  return Tokenizer(tok, config)

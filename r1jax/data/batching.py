"""Input pipeline: prompt batches for RL / evaluation, token batches for SFT.

    batcher = PromptBatcher(records, tok, template='r1_zero', batch_size=32,
                            buckets=(64, 128), seed=0)
    batch = next(batcher)  # prompt_ids int32[B, P], prompt_mask bool[B, P], ...
    state = batcher.get_state()  # {'epoch', 'position', 'seed'}: into the ckpt
    ...
    batcher.set_state(state)  # continues with exactly the batches that follow

Both batchers walk a stream of record indices: epoch after epoch, each a
permutation drawn from Generator(PCG64([seed, epoch])), of which this process
reads only positions i with i % process_count == process_index. With
`repeat`, batches run on across epoch boundaries (no example is dropped); the
state is (epoch, position of the next unread index in this process's shard).
A batch depends only on that state, so resuming is exact.
"""

import logging
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.data import templates
from r1jax.tokenizer import bucket_length


class _IndexStream:
  """One process's shard of the per-epoch permutations, as a cursor."""

  def __init__(self, n: int, *, seed: int, shuffle: bool, repeat: bool,
               process_index: int, process_count: int, equal_shards: bool):
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index={process_index} is not in '
                       f'[0, process_count={process_count}).')
    # Equal shards keep every process at the same number of batches (a
    # multi-host step needs all of them); the n % process_count indices
    # cut off differ from epoch to epoch.
    usable = n - n % process_count if equal_shards else n
    self.shard_len = len(range(process_index, usable, process_count))
    if self.shard_len == 0:
      raise ValueError(f'{n} records leave process {process_index} of '
                       f'{process_count} with nothing to read.')
    self.n, self.usable = n, usable
    self.shuffle, self.repeat = shuffle, repeat
    self.process_index, self.process_count = process_index, process_count
    self.seed, self.epoch, self.position = int(seed), 0, 0
    self._cache: tuple[tuple[int, int], np.ndarray] | None = None

  def _shard(self) -> np.ndarray:
    key = (self.seed, self.epoch)
    if self._cache is None or self._cache[0] != key:
      if self.shuffle:
        rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch]))
        order = rng.permutation(self.n)
      else:
        order = np.arange(self.n)
      shard = order[:self.usable][self.process_index::self.process_count]
      self._cache = (key, shard)
    return self._cache[1]

  def peek(self) -> int | None:
    """The next index without consuming it; None at the end of the data."""
    if self.position >= self.shard_len:
      if not self.repeat:
        return None
      self.epoch += 1
      self.position = 0
    return int(self._shard()[self.position])

  def advance(self) -> None:
    self.position += 1

  def take(self) -> int | None:
    i = self.peek()
    if i is not None:
      self.advance()
    return i

  def get_state(self) -> dict[str, int]:
    return {'epoch': self.epoch, 'position': self.position, 'seed': self.seed}

  def set_state(self, state: Mapping[str, Any]) -> None:
    epoch, position = int(state['epoch']), int(state['position'])
    if epoch < 0 or not 0 <= position <= self.shard_len:
      raise ValueError(f'Iterator state {dict(state)} does not fit a shard of '
                       f'{self.shard_len} records; was the dataset or the '
                       'process count changed?')
    self.epoch, self.position = epoch, position
    self.seed = int(state.get('seed', self.seed))


class _Batcher:
  """Iterator protocol and state for both batchers."""

  _stream: _IndexStream

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return self

  def __next__(self) -> dict[str, Any]:
    raise NotImplementedError

  def get_state(self) -> dict[str, int]:
    """{'epoch', 'position', 'seed'}: Python ints to save in a checkpoint."""
    return self._stream.get_state()

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Restores a `get_state()` result (ints or 0-d arrays)."""
    self._stream.set_state(state)


# ----------------------------------------------------------------------------
# Prompts (RL rollouts, evaluation)
# ----------------------------------------------------------------------------


def _prompt_encoder(template: str | Callable[[str], str], tokenizer,
                    add_bos: bool | None):
  """A function problem -> (prompt text, prompt ids)."""
  if callable(template):
    render, ids = template, None
  else:
    templates.TEMPLATES.get(template)  # Fail at start-up on a bad name.
    render = lambda p: templates.render_prompt(template, p, tokenizer)
    if add_bos is None:
      # Chat templates go through apply_chat_template (and its BOS rule).
      ids = lambda p: templates.prompt_ids(template, p, tokenizer)

  def encode(problem: str) -> tuple[str, list[int]]:
    text = render(problem)
    return text, (ids(problem) if ids else tokenizer.encode(text, add_bos))

  return encode


class PromptBatcher(_Batcher):
  """Batches of left-padded, bucketed prompt ids with their records.

  Yields {'prompt_ids': int32[B, P], 'prompt_mask': bool[B, P],
  'examples': list of B records, 'prompts': list of B rendered strings}.
  P is the smallest bucket that fits the batch (the largest bucket with
  `pad_to_max_bucket`). `batch_size` counts this process's prompts.

  Prompts are rendered (`template`: a name in data.templates.TEMPLATES or a
  function problem -> text) and tokenised once, up front, so a prompt longer
  than the largest bucket fails at start-up (or is left out: `drop_long`).
  `drop_remainder` gives every process the same number of records per epoch
  and, without `repeat`, drops a final short batch (kept otherwise, with
  fewer rows).
  """

  def __init__(self, records: Sequence[dict], tokenizer, *,
               template: str | Callable[[str], str], batch_size: int,
               buckets: Sequence[int], seed: int, shuffle: bool = True,
               repeat: bool = True, process_index: int = 0,
               process_count: int = 1, drop_remainder: bool = True,
               pad_to_max_bucket: bool = False, drop_long: bool = False,
               add_bos: bool | None = None, problem_key: str = 'problem'):
    if batch_size < 1 or not buckets:
      raise ValueError(f'batch_size={batch_size} must be >= 1 and buckets '
                       f'({buckets}) non-empty.')
    encode = _prompt_encoder(template, tokenizer, add_bos)
    encoded = [encode(r[problem_key]) for r in records]
    prompts, ids = [e[0] for e in encoded], [e[1] for e in encoded]
    longest = max(buckets)
    too_long = [i for i, x in enumerate(ids) if len(x) > longest]
    if too_long and not drop_long:
      raise ValueError(
          f'{len(too_long)} of {len(ids)} prompts exceed the largest bucket '
          f'({longest} tokens; longest prompt '
          f'{max(len(ids[i]) for i in too_long)}). Add a bucket or set '
          'drop_long=True.')
    if too_long:
      logging.warning('PromptBatcher: left out %d of %d prompts longer than '
                      '%d tokens.', len(too_long), len(ids), longest)
    keep = sorted(set(range(len(ids))) - set(too_long))
    self.records = [records[i] for i in keep]
    self.prompts = [prompts[i] for i in keep]
    self.prompt_ids = [ids[i] for i in keep]
    self.tokenizer = tokenizer
    self.batch_size = batch_size
    self.buckets = (longest,) if pad_to_max_bucket else tuple(sorted(buckets))
    self.drop_remainder = drop_remainder
    self._stream = _IndexStream(
        len(self.records), seed=seed, shuffle=shuffle, repeat=repeat,
        process_index=process_index, process_count=process_count,
        equal_shards=drop_remainder)

  def __len__(self) -> int:
    """Batches per epoch on this process (the last may be short)."""
    whole, rest = divmod(self._stream.shard_len, self.batch_size)
    return whole + (rest > 0 and not self.drop_remainder)

  def __next__(self) -> dict[str, Any]:
    index = []
    while len(index) < self.batch_size:
      i = self._stream.take()
      if i is None:
        break
      index.append(i)
    if not index or (len(index) < self.batch_size and self.drop_remainder):
      raise StopIteration
    ids_BxP, mask_BxP = self.tokenizer.pad_batch(
        [self.prompt_ids[i] for i in index], self.buckets, left=True)
    return {'prompt_ids': ids_BxP.astype(np.int32),
            'prompt_mask': mask_BxP.astype(np.bool_),
            'examples': [self.records[i] for i in index],
            'prompts': [self.prompts[i] for i in index]}


# ----------------------------------------------------------------------------
# SFT / pretraining token batches
# ----------------------------------------------------------------------------


def _tokenize_example(example, tokenizer, add_eos: bool, loss_on_prompt: bool):
  """(ids int32[L], target bool[L]) of one example, before truncation."""
  if isinstance(example, str):
    prompt_ids, completion_ids = [], tokenizer.encode(example)
  elif 'prompt_ids' in example or 'completion_ids' in example:
    prompt_ids = list(example.get('prompt_ids', ()))
    completion_ids = list(example.get('completion_ids', ()))
  else:
    prompt_ids = tokenizer.encode(example['prompt'])
    # The completion never gets a BOS: the sampler appends generated tokens
    # straight after the prompt, and SFT must see the same sequence.
    completion_ids = tokenizer.encode(example['completion'], add_bos=False)
  if add_eos:
    if tokenizer.eos_id is None:
      raise ValueError('add_eos=True but the tokenizer has no EOS token.')
    completion_ids = completion_ids + [tokenizer.eos_id]
  ids = np.asarray(prompt_ids + completion_ids, np.int32)
  target = np.zeros(len(ids), np.bool_)
  target[0 if loss_on_prompt else len(prompt_ids):] = True
  return ids, target


class SFTBatcher(_Batcher):
  """Batches of (packed) token rows for next-token training.

  Examples are strings (a document, every token a target), dicts with
  'prompt' and 'completion' text, or pre-tokenised dicts with 'prompt_ids'
  and 'completion_ids'. Yields int32 'tokens', 'positions', 'segment_ids'
  and bool 'loss_mask', all [B, T]:
    segment_ids  1, 2, ... for the documents packed into a row; 0 = padding.
    positions    restart at 0 in every segment.
    loss_mask    True where tokens[b, t] is a target predicted from the
                 tokens before it in its segment: completion tokens and the
                 EOS (every token with `loss_on_prompt`), never a segment's
                 first token, never padding. A trainer scores
                 logits[:, :-1] against tokens[:, 1:] under loss_mask[:, 1:].
  With `pack`, whole examples are packed greedily into rows of `seq_len`
  (a row closes when the next example does not fit). Without, each row holds
  one example, right-padded to seq_len or to the smallest of `buckets`
  that fits the batch. Examples longer than seq_len keep their first seq_len
  tokens; `num_truncated` counts them. Rows left empty at the end of the data
  (without `repeat`) are all padding, so shapes stay fixed.
  """

  def __init__(self, examples: Sequence[Any], tokenizer, *, batch_size: int,
               seq_len: int, pack: bool, loss_on_prompt: bool, seed: int,
               shuffle: bool = True, repeat: bool = True,
               process_index: int = 0, process_count: int = 1,
               add_eos: bool = True, drop_remainder: bool = False,
               buckets: Sequence[int] | None = None):
    if batch_size < 1 or seq_len < 2:
      raise ValueError(f'batch_size={batch_size} must be >= 1 and '
                       f'seq_len={seq_len} >= 2.')
    tokenized = [_tokenize_example(e, tokenizer, add_eos, loss_on_prompt)
                 for e in examples]
    self.examples = [x for x in tokenized if len(x[0])]
    if len(self.examples) < len(tokenized):
      logging.warning('SFTBatcher: left out %d empty examples.',
                      len(tokenized) - len(self.examples))
    self.num_truncated = sum(len(ids) > seq_len for ids, _ in self.examples)
    if self.num_truncated:
      logging.warning('SFTBatcher: %d of %d examples are longer than '
                      'seq_len=%d and will be truncated.', self.num_truncated,
                      len(self.examples), seq_len)
    self.pad_id = tokenizer.pad_id
    self.batch_size, self.seq_len, self.pack = batch_size, seq_len, pack
    self.buckets = None
    if buckets and not pack:
      self.buckets = sorted({b for b in buckets if b < seq_len} | {seq_len})
    self._stream = _IndexStream(
        len(self.examples), seed=seed, shuffle=shuffle, repeat=repeat,
        process_index=process_index, process_count=process_count,
        equal_shards=drop_remainder)
    self.drop_remainder = drop_remainder

  def _rows(self) -> list[list[int]]:
    """Example indices of each row of the next batch (consumes them)."""
    rows = []
    while len(rows) < self.batch_size:
      row, used = [], 0
      while True:
        i = self._stream.peek()
        if i is None:
          break
        n = min(len(self.examples[i][0]), self.seq_len)
        if row and (not self.pack or used + n > self.seq_len):
          break
        row.append(i)
        used += n
        self._stream.advance()
      if not row:
        break
      rows.append(row)
    return rows

  def __next__(self) -> dict[str, np.ndarray]:
    rows = self._rows()
    if not rows or (len(rows) < self.batch_size and self.drop_remainder):
      raise StopIteration
    length = self.seq_len
    if self.buckets:
      longest = max(min(len(self.examples[r[0]][0]), self.seq_len)
                    for r in rows)
      length = bucket_length(longest, self.buckets)
    shape = (self.batch_size, length)
    tokens = np.full(shape, self.pad_id, np.int32)
    positions = np.zeros(shape, np.int32)
    segment_ids = np.zeros(shape, np.int32)
    loss_mask = np.zeros(shape, np.bool_)
    for b, row in enumerate(rows):
      offset = 0
      for s, i in enumerate(row, start=1):
        ids, target = self.examples[i]
        n = min(len(ids), length)
        span = slice(offset, offset + n)
        tokens[b, span] = ids[:n]
        positions[b, span] = np.arange(n)
        segment_ids[b, span] = s
        loss_mask[b, span] = target[:n]
        loss_mask[b, offset] = False  # Nothing before it to predict from.
        offset += n
    return {'tokens': tokens, 'positions': positions,
            'segment_ids': segment_ids, 'loss_mask': loss_mask}


def segment_mask(segment_ids_BxT: jax.Array) -> jax.Array:
  """Attention mask bool[B, T, T]: causal, within a segment, no padding.

  mask[b, i, j] lets query i attend to key j. Padding queries keep their
  diagonal so that no softmax row is empty (their outputs are never used).
  """
  seg_BxT = jnp.asarray(segment_ids_BxT)
  t = seg_BxT.shape[-1]
  causal_1xTxT = jnp.tril(jnp.ones((t, t), jnp.bool_))[None]
  same_BxTxT = seg_BxT[:, :, None] == seg_BxT[:, None, :]
  real_BxTx1 = (seg_BxT != 0)[:, :, None]
  diag_1xTxT = jnp.eye(t, dtype=jnp.bool_)[None]
  return (causal_1xTxT & same_BxTxT & real_BxTx1) | diag_1xTxT

"""Input pipeline: exact resume, per-host shards, SFT packing and masks."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.data import corpus
from r1jax.data import synthetic
from r1jax.data.batching import PromptBatcher
from r1jax.data.batching import segment_mask
from r1jax.data.batching import SFTBatcher
from r1jax.tokenizer import train_bpe


@pytest.fixture(scope='module')
def tok():
  texts = corpus.tokenizer_training_texts(corpus.CorpusConfig(), 300, seed=0)
  return train_bpe(texts, vocab_size=300)


def qa(problem):
  return f'Question: {problem}\nAnswer:'


def records(n, seed=0):
  return synthetic.generate('arithmetic', n, seed=seed)


def prompt_batcher(recs, tok, **kw):
  args = dict(template=qa, batch_size=3, buckets=(24, 32, 48), seed=5)
  args.update(kw)
  return PromptBatcher(recs, tok, **args)


def ids_of(batch):
  return [r['id'] for r in batch['examples']]


# ----------------------------------------------------------------------------
# PromptBatcher
# ----------------------------------------------------------------------------


def test_prompt_batches_are_left_padded_bucketed_prompts(tok):
  recs = records(10)
  batch = next(prompt_batcher(recs, tok))
  ids, mask = batch['prompt_ids'], batch['prompt_mask']
  assert ids.dtype == np.int32 and mask.dtype == np.bool_
  assert ids.shape == mask.shape and ids.shape[0] == 3
  lengths = [len(tok.encode(qa(r['problem']))) for r in batch['examples']]
  assert ids.shape[1] == min(b for b in (24, 32, 48) if b >= max(lengths))
  for row, m, ex, n in zip(ids, mask, batch['examples'], lengths):
    assert m.sum() == n and m[-n:].all()  # Real tokens at the right end.
    assert row[m].tolist() == tok.encode(qa(ex['problem']))
    assert (row[~m] == tok.pad_id).all()
  assert batch['prompts'] == [qa(r['problem']) for r in batch['examples']]
  fixed = next(prompt_batcher(recs, tok, pad_to_max_bucket=True))
  assert fixed['prompt_ids'].shape == (3, 48)


def test_one_epoch_is_a_seeded_permutation(tok):
  recs = records(10)
  one = lambda seed: sum(
      (ids_of(b) for b in prompt_batcher(recs, tok, seed=seed, repeat=False,
                                         drop_remainder=False)), [])
  a = one(5)
  assert sorted(a) == sorted(r['id'] for r in recs)
  assert a == one(5) and a != one(6)
  unshuffled = sum((ids_of(b) for b in prompt_batcher(
      recs, tok, shuffle=False, repeat=False, drop_remainder=False)), [])
  assert unshuffled == [r['id'] for r in recs]
  # drop_remainder drops the short last batch (10 = 3 * 3 + 1).
  kept = list(prompt_batcher(recs, tok, repeat=False))
  assert len(kept) == 3 and all(len(b['examples']) == 3 for b in kept)


def test_repeat_runs_across_epochs_with_new_orders(tok):
  recs = records(10)
  stream = sum((ids_of(next(b)) for b in [prompt_batcher(recs, tok)] * 10), [])
  epochs = [stream[:10], stream[10:20], stream[20:30]]
  for e in epochs:
    assert sorted(e) == sorted(r['id'] for r in recs)
  assert epochs[0] != epochs[1]


@pytest.mark.parametrize('k', [0, 1, 3, 4, 7])
def test_prompt_batcher_resumes_exactly(tok, k):
  recs = records(10)
  first = prompt_batcher(recs, tok)
  for _ in range(k):  # 10 records, batches of 3: crosses epochs at k >= 4.
    next(first)
  state = first.get_state()
  assert set(state) == {'epoch', 'position', 'seed'}
  assert all(type(v) is int for v in state.values())
  expected = [next(first) for _ in range(5)]
  # A new batcher, even with another seed, continues from the state; states
  # may come back from a checkpoint as arrays.
  second = prompt_batcher(recs, tok, seed=99)
  second.set_state({k_: np.asarray(v) for k_, v in state.items()})
  for want in expected:
    got = next(second)
    assert ids_of(got) == ids_of(want)
    np.testing.assert_array_equal(got['prompt_ids'], want['prompt_ids'])
    np.testing.assert_array_equal(got['prompt_mask'], want['prompt_mask'])


@pytest.mark.parametrize('n,drop', [(12, True), (13, False), (13, True)])
def test_host_shards_are_disjoint_and_cover(tok, n, drop):
  recs = records(n)
  per_host = []
  for p in range(3):
    b = prompt_batcher(recs, tok, batch_size=2, process_index=p,
                       process_count=3, repeat=False, drop_remainder=drop)
    got = []
    while True:
      try:
        got += ids_of(next(b))
      except StopIteration:
        break
    # Each host reads only its own indices of the shared permutation.
    b2 = prompt_batcher(recs, tok, batch_size=2, process_index=p,
                        process_count=3, repeat=False, drop_remainder=drop)
    assert len(b2) == len(list(b2))
    per_host.append(got)
  flat = sum(per_host, [])
  assert len(flat) == len(set(flat))  # Disjoint.
  if drop:  # Same number of batches everywhere; n % 3 records left out.
    assert len({len(h) for h in per_host}) == 1
    assert len(flat) == n - n % 3 - sum(len(h) % 2 for h in per_host)
  else:
    assert sorted(flat) == sorted(r['id'] for r in recs)


def test_long_prompts_fail_at_start_or_are_dropped(tok):
  recs = records(6)
  long = dict(recs[0], problem='Compute ' + ' + '.join(['12'] * 20) + '.')
  with pytest.raises(ValueError, match='largest bucket'):
    prompt_batcher(recs + [long], tok)
  b = prompt_batcher(recs + [long], tok, drop_long=True, repeat=False,
                     drop_remainder=False)
  assert sorted(sum((ids_of(x) for x in b), [])) == sorted(
      r['id'] for r in recs)


def test_template_by_name(tok):
  templates = pytest.importorskip('r1jax.data.templates')
  recs = records(4)
  b = PromptBatcher(recs, tok, template='r1_zero', batch_size=2,
                    buckets=(256, 512), seed=0)
  batch = next(b)
  for p, r in zip(batch['prompts'], batch['examples']):
    assert p == templates.render_prompt('r1_zero', r['problem'], tok)


# ----------------------------------------------------------------------------
# SFTBatcher
# ----------------------------------------------------------------------------


class StubTokenizer:
  eos_id, pad_id = 9, 0


HAND = [
    dict(prompt_ids=[1, 2], completion_ids=[3, 4]),  # -> 1 2 3 4 9
    dict(prompt_ids=[5], completion_ids=[6]),  # -> 5 6 9
    dict(prompt_ids=[], completion_ids=[7, 8]),  # -> 7 8 9
]


def sft(examples, tokenizer=None, **kw):
  args = dict(batch_size=2, seq_len=8, pack=True, loss_on_prompt=False,
              seed=0, shuffle=False, repeat=False)
  args.update(kw)
  return SFTBatcher(examples, tokenizer or StubTokenizer(), **args)


def test_packing_by_hand():
  b = next(sft(HAND))
  T, F = True, False
  np.testing.assert_array_equal(b['tokens'], [[1, 2, 3, 4, 9, 5, 6, 9],
                                              [7, 8, 9, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(b['positions'], [[0, 1, 2, 3, 4, 0, 1, 2],
                                                 [0, 1, 2, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(b['segment_ids'], [[1, 1, 1, 1, 1, 2, 2, 2],
                                                   [1, 1, 1, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(b['loss_mask'], [[F, F, T, T, T, F, T, T],
                                                 [F, T, T, F, F, F, F, F]])
  for key in ('tokens', 'positions', 'segment_ids'):
    assert b[key].dtype == np.int32
  b = next(sft(HAND, loss_on_prompt=True))
  np.testing.assert_array_equal(b['loss_mask'], [[F, T, T, T, T, F, T, T],
                                                 [F, T, T, F, F, F, F, F]])


def test_unpacked_by_hand_and_buckets():
  it = sft(HAND, pack=False)
  b1, b2 = next(it), next(it)
  T, F = True, False
  np.testing.assert_array_equal(b1['tokens'], [[1, 2, 3, 4, 9, 0, 0, 0],
                                               [5, 6, 9, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(b1['segment_ids'], [[1, 1, 1, 1, 1, 0, 0, 0],
                                                    [1, 1, 1, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(b1['loss_mask'][1], [F, T, T, F, F, F, F, F])
  # The last batch keeps its shape; the missing row is padding only.
  assert b2['tokens'].shape == (2, 8)
  assert not b2['segment_ids'][1].any() and not b2['loss_mask'][1].any()
  with pytest.raises(StopIteration):
    next(it)
  b = next(sft(HAND, pack=False, buckets=(4, 6)))
  assert b['tokens'].shape == (2, 6)


def test_truncation_is_counted_and_keeps_the_start():
  long = dict(prompt_ids=[1, 2, 3], completion_ids=[4, 5, 6, 7])  # 8 with EOS
  it = sft([long] + HAND[1:], seq_len=6, batch_size=1)
  assert it.num_truncated == 1
  b = next(it)
  np.testing.assert_array_equal(b['tokens'], [[1, 2, 3, 4, 5, 6]])
  np.testing.assert_array_equal(b['loss_mask'], [[0, 0, 0, 1, 1, 1]])


def segments(batches):
  """Every packed document as (tokens, loss_mask) tuples."""
  out = []
  for b in batches:
    for row in range(b['tokens'].shape[0]):
      for s in range(1, b['segment_ids'][row].max() + 1):
        sel = b['segment_ids'][row] == s
        assert (b['positions'][row][sel] == np.arange(sel.sum())).all()
        out.append((tuple(b['tokens'][row][sel]),
                    tuple(b['loss_mask'][row][sel])))
  return out


@pytest.fixture(scope='module')
def sft_examples():
  return [dict(prompt=d['prompt'], completion=d['completion'])
          for d in corpus.corpus_records(
              corpus.CorpusConfig(p_r1_prompt=0.2), 60, seed=4)]


def test_packed_and_unpacked_hold_the_same_targets(tok, sft_examples):
  kw = dict(batch_size=4, seq_len=160, seed=3, shuffle=True, repeat=False)
  packed = list(SFTBatcher(sft_examples, tok, pack=True, loss_on_prompt=False,
                           **kw))
  unpacked = list(SFTBatcher(sft_examples, tok, pack=False,
                             loss_on_prompt=False, **kw))
  assert len(packed) < len(unpacked)  # Packing saves rows.
  assert collections.Counter(segments(packed)) == collections.Counter(
      segments(unpacked))
  assert sum(b['loss_mask'].sum() for b in packed) == sum(
      b['loss_mask'].sum() for b in unpacked)
  # Targets are the completion and EOS tokens only.
  ex = sft_examples[0]
  want = tok.encode(ex['completion'], add_bos=False) + [tok.eos_id]
  n_prompt = len(tok.encode(ex['prompt']))
  first = SFTBatcher([ex], tok, batch_size=1, seq_len=160, pack=False,
                     loss_on_prompt=False, seed=0)
  b = next(first)
  assert b['tokens'][0][b['loss_mask'][0]].tolist() == want
  assert b['loss_mask'][0].sum() == len(want) and not b['loss_mask'][0][
      :n_prompt].any()


def test_sft_resumes_exactly_and_shards(tok, sft_examples):
  kw = dict(batch_size=2, seq_len=96, pack=True, loss_on_prompt=True, seed=1)
  first = SFTBatcher(sft_examples[:13], tok, **kw)
  for _ in range(9):  # ~6 examples a batch: past the first epoch.
    next(first)
  state = first.get_state()
  assert state['epoch'] >= 1
  expected = [next(first) for _ in range(4)]
  second = SFTBatcher(sft_examples[:13], tok, **kw)
  second.set_state(state)
  for want in expected:
    got = next(second)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  # Long enough that no two examples are cut to the same tokens.
  kw.update(seq_len=256, loss_on_prompt=False, repeat=False)
  hosts = [segments(SFTBatcher(sft_examples, tok, process_index=p,
                               process_count=2, **kw)) for p in range(2)]
  everything = segments(SFTBatcher(sft_examples, tok, **kw))
  assert len(set(everything)) == len(sft_examples)
  assert not set(hosts[0]) & set(hosts[1])
  assert collections.Counter(hosts[0] + hosts[1]) == collections.Counter(
      everything)


def test_string_documents_are_all_targets(tok):
  doc = 'Q: Compute 1 + 2.\nA: 3'
  b = next(SFTBatcher([doc], tok, batch_size=1, seq_len=64, pack=True,
                      loss_on_prompt=False, seed=0))
  n = len(tok.encode(doc)) + 1
  np.testing.assert_array_equal(b['loss_mask'][0][:n], [False] + [True] * (n - 1))


# ----------------------------------------------------------------------------
# segment_mask
# ----------------------------------------------------------------------------


def test_segment_mask_by_hand_and_under_jit():
  seg = np.array([[1, 1, 2, 0], [0, 0, 0, 0]], np.int32)
  want = np.array([
      [[1, 0, 0, 0],
       [1, 1, 0, 0],
       [0, 0, 1, 0],
       [0, 0, 0, 1]],  # Padding query: only its diagonal.
      np.eye(4)], bool)
  np.testing.assert_array_equal(segment_mask(seg), want)
  np.testing.assert_array_equal(jax.jit(segment_mask)(jnp.asarray(seg)), want)
  assert segment_mask(seg).dtype == jnp.bool_

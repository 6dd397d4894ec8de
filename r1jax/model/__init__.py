"""The Llama / Qwen2 decoder, its presets, and checkpoint import / export."""

from r1jax.model.config import PRESETS, ModelConfig, RopeScaling, get_config
from r1jax.model.functional import (abstract, apply, build, causal_mask,
                                    count_params, init, positions_from_mask,
                                    token_logprobs)
from r1jax.model.transformer import Cache, Transformer, init_cache

"""Sampling from the r1jax model: jitted prefill + segmented while_loop decode.

    from r1jax.sampling import Sampler, generate_text
"""

from r1jax.sampling.controls import (Mode, categorical, greedy, min_p_filter,
                                     policy_logits, top_k_filter, top_p_filter)
from r1jax.sampling.sampler import (FINISH_LENGTH, FINISH_STOP, SampleOutput,
                                    Sampler, budget_bucket, generate_text,
                                    segment_ends)

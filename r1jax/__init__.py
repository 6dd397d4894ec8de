"""r1jax: the DeepSeek-R1 training recipe in JAX / Flax NNX."""

__version__ = '0.1.0'

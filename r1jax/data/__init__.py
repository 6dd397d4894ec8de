"""Data: TFDS builders of the math sets, prompt templates, cold-start SFT data,
synthetic tasks and the input pipeline.

Submodules are imported on first use (PEP 562), so `import r1jax.data` stays
cheap: tensorflow-datasets loads only when a builder is needed.
"""

import importlib

_LAZY = {
    'load_dataset': 'builders',
    'DATASETS': 'builders',
    'TEMPLATES': 'templates',
    'render_prompt': 'templates',
    'prompt_ids': 'templates',
    'cold_start_examples': 'cold_start',
}


def __getattr__(name):
  if name in _LAZY:
    module = importlib.import_module(f'{__name__}.{_LAZY[name]}')
    return getattr(module, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

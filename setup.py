"""r1jax: the DeepSeek-R1 training recipe in JAX / Flax NNX."""

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements(name):
  lines = (_HERE / name).read_text().splitlines()
  return [l.split('#')[0].strip() for l in lines if l.split('#')[0].strip()]


setuptools.setup(
    name='r1jax',
    version='0.1.0',
    description='DeepSeek-R1 (R1-Zero, R1, distillation) in JAX / Flax NNX.',
    long_description=(_HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    python_requires='>=3.11',
    # experiments/ ships too: the entry points read its configs (the config
    # checks take their schema from them, the tiny base's pretraining config
    # is experiments/pretrain_tiny.py), so a plain `pip install .` runs.
    packages=setuptools.find_packages(
        include=['r1jax', 'r1jax.*', 'experiments']),
    install_requires=_requirements('requirements.txt'),
    extras_require={
        'test': [
            'pytest==9.0.3',
            'pytest-timeout==2.4.0',
            # Two test processes (pytest.ini): the suite in ~23 min instead
            # of ~30 on 2 cores, most of a test being one-core compilation.
            'pytest-xdist==3.8.0',
            'hypothesis==6.155.2',
            'matplotlib==3.11.2',
            # tests/test_notebook.py executes notebooks/r1_zero_colab.ipynb.
            'nbclient==0.11.0',
            'nbformat==5.11.1',
            'ipykernel==7.4.0',
        ],
    },
)

"""notebooks/r1_zero_colab.ipynb runs top to bottom (smoke mode, on CPU).

The notebook reads R1JAX_NOTEBOOK_SMOKE: no installs, no downloads, a randomly
initialised tiny base model, 2 GRPO steps. Every cell must run without an
error and the outputs must hold what the notebook promises (the device's
choice, curves, completions with rewards, the base-vs-trained table). Which
model a GPU or TPU gets is tested in tests/test_device_choice.py.
"""

import pathlib
import time

import pytest

nbclient = pytest.importorskip('nbclient')  # the 'test' extras
nbformat = pytest.importorskip('nbformat')

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'notebooks' / 'r1_zero_colab.ipynb'


def _text(nb) -> str:
  out = []
  for cell in nb.cells:
    for o in cell.get('outputs', []):
      if o.get('output_type') == 'stream':
        out.append(o['text'])
      elif 'data' in o and 'text/plain' in o['data']:
        out.append(o['data']['text/plain'])
  return ''.join(out)


def test_notebook_runs_in_smoke_mode(tmp_path, monkeypatch):
  # The kernel inherits the environment: one CPU device (not the 8 simulated
  # ones of conftest.py), smoke mode, a fresh workdir.
  monkeypatch.setenv('XLA_FLAGS', '')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('R1JAX_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('R1JAX_NOTEBOOK_WORKDIR', str(tmp_path / 'zero'))
  # No network here: a download that ran by mistake fails instead of hanging.
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert not any(c.get('outputs') for c in nb.cells if c.cell_type == 'code'), (
      'commit the notebook without outputs')
  t0 = time.perf_counter()
  nbclient.NotebookClient(
      nb, timeout=300, kernel_name='python3',
      resources={'metadata': {'path': str(REPO)}}).execute()
  elapsed = time.perf_counter() - t0
  text = _text(nb)
  assert 'smoke mode: no installs' in text
  # The device cell chose on this CPU (no memory limit): the tiny default.
  assert 'no device memory limit reported (CPU)' in text
  assert 'no download: smoke mode' in text
  assert not (tmp_path / 'models').exists()
  assert 'exported Hugging Face checkpoint' in text and 'done in' in text
  assert (tmp_path / 'zero' / 'plots' / 'curves.png').is_file()
  assert any('image/png' in o.get('data', {})
             for c in nb.cells for o in c.get('outputs', []))
  assert 'recent training completions' in text and '| reward ' in text
  assert 'base' in text and 'trained' in text and 'pass@1' in text
  print(f'notebook executed in {elapsed:.0f} s; per cell:', [
      round(_seconds(c), 1) for c in nb.cells if c.cell_type == 'code'])


def _seconds(cell) -> float:
  from datetime import datetime  # pylint: disable=g-import-not-at-top
  ex = cell.get('metadata', {}).get('execution', {})
  if 'iopub.execute_input' not in ex or 'shell.execute_reply' not in ex:
    return float('nan')
  t = lambda k: datetime.fromisoformat(ex[k].replace('Z', '+00:00'))
  return (t('shell.execute_reply') - t('iopub.execute_input')).total_seconds()

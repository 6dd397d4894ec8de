"""The package's layers, read from its imports (ast, nothing is imported).

  leaves       model, sampling, rl, rewards, data, tokenizer, checkpoint,
               metrics, parallel, registry, errors, reasoning_stats, atomic
  run support  r1jax.run.*, memory, checkpoint_source
  evaluation   r1jax.evaluate, base_ability
  stages       r1jax.stages.* (a stage and its own helper modules; a stage
               never imports another stage)
  entry points train, pipeline (+ pipeline_jobs), evaluate_cli, evaluate/__main__, runs,
               generate, config_checks, tiny_base: the only modules that
               read experiments/

A module imports its own layer or lower ones. An import inside a function is
allowed only for the heavy or optional dependencies in `LAZY_OK`.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / 'r1jax'

LEAVES = ('r1jax.model', 'r1jax.sampling', 'r1jax.rl', 'r1jax.rewards',
          'r1jax.data', 'r1jax.tokenizer', 'r1jax.checkpoint',
          'r1jax.metrics', 'r1jax.parallel', 'r1jax.registry',
          'r1jax.errors', 'r1jax.reasoning_stats', 'r1jax.atomic')
RUN = ('r1jax.run', 'r1jax.memory', 'r1jax.checkpoint_source')
EVALUATION = ('r1jax.evaluate', 'r1jax.base_ability')
STAGES = ('r1jax.stages',)
ENTRY = ('r1jax.train', 'r1jax.pipeline', 'r1jax.pipeline_jobs',
         'r1jax.study',
         'r1jax.evaluate_cli',
         'r1jax.evaluate.__main__', 'r1jax.runs', 'r1jax.generate',
         'r1jax.config_checks', 'r1jax.tiny_base', 'r1jax')
LAYERS = (LEAVES, RUN, EVALUATION, STAGES, ENTRY)

# Each stage: the modules that belong to it (its helpers).
STAGE_GROUPS = {
    'sft': ('r1jax.stages.sft', 'r1jax.stages.sft_update',
            'r1jax.stages.distill_teacher'),
    'grpo': ('r1jax.stages.grpo', 'r1jax.stages.grpo_rollout',
             'r1jax.stages.grpo_update', 'r1jax.stages.grpo_lengths'),
    'rejection': ('r1jax.stages.rejection',),
    'evaluate': ('r1jax.stages.evaluate',),
}

# Imports that may stay inside a function: optional or slow to import.
LAZY_OK = {
    'r1jax.data.builders': 'imports tensorflow_datasets (about a second)',
    'r1jax.data.builders.raw': 'the package imports tensorflow_datasets',
    'r1jax.model.gguf': 'the gguf package, only for GGUF files',
    'tensorboardX': 'optional TensorBoard output',
    'matplotlib': 'optional: a study\'s plot (r1jax.study)',
    'matplotlib.pyplot': 'optional: a study\'s plot (r1jax.study)',
    'math_verify': 'runs in the math-verify worker processes',
    'jinja2': 'only for a tokenizer with a chat template',
    'inspect': 'the standard library',
    # The sandbox's boot code, run in a fresh interpreter before the user's
    # code, imports what it needs as late as it can.
    'ctypes': 'sandbox', 'resource': 'sandbox', '_posixsubprocess': 'sandbox',
    '_signal': 'sandbox',
}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts.pop()
  return '.'.join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob('*.py'))}


def _imports(name: str):
  """(target module, line, inside a function) of each import of `name`."""
  path = MODULES[name]
  tree = ast.parse(path.read_text(encoding='utf-8'))
  is_pkg = path.name == '__init__.py'
  parents = {}
  for node in ast.walk(tree):
    for child in ast.iter_child_nodes(node):
      parents[child] = node
  out = []
  for node in ast.walk(tree):
    if not isinstance(node, (ast.Import, ast.ImportFrom)):
      continue
    inside, up = False, node
    while up in parents:
      up = parents[up]
      if isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef)):
        inside = True
        break
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    else:
      base = node.module or ''
      if node.level:
        pkg = name.split('.') if is_pkg else name.split('.')[:-1]
        pkg = pkg[:len(pkg) - (node.level - 1)]
        base = '.'.join(pkg + ([base] if base else []))
      targets = []
      for alias in node.names:
        full = f'{base}.{alias.name}'
        targets.append(full if full in MODULES else base)
    out += [(t, node.lineno, inside) for t in targets]
  return out


def _in(name: str, prefixes) -> bool:
  return any(name == p or name.startswith(p + '.') for p in prefixes)


def _layer(name: str) -> int:
  if name in ENTRY:  # exact names first: r1jax.evaluate.__main__
    return len(LAYERS) - 1
  for i, prefixes in enumerate(LAYERS[:-1]):
    if _in(name, prefixes):
      return i
  raise AssertionError(f'{name} is in no layer of tests/test_layering.py')


def _stage_of(name: str) -> str | None:
  return next((s for s, mods in STAGE_GROUPS.items() if name in mods), None)


def test_every_module_has_a_layer():
  for name in MODULES:
    _layer(name)
  stage_modules = [n for n in MODULES if n.startswith('r1jax.stages.')]
  assert all(_stage_of(n) for n in stage_modules), stage_modules


@pytest.mark.parametrize('name', sorted(MODULES))
def test_imports_go_down_the_layers(name):
  mine = _layer(name)
  for target, line, _ in _imports(name):
    if target == 'experiments' or target.startswith('experiments.'):
      assert mine == len(LAYERS) - 1, (
          f'{MODULES[name]}:{line} reads experiments/: only entry points may')
      continue
    if not target.startswith('r1jax'):
      continue
    assert _layer(target) <= mine, (
        f'{MODULES[name]}:{line} imports {target}, a higher layer')
    if _layer(target) == mine == 3:
      assert _stage_of(target) == _stage_of(name), (
          f'{MODULES[name]}:{line}: stage {_stage_of(name)} imports stage '
          f'{_stage_of(target)}')


@pytest.mark.parametrize('name', sorted(MODULES))
def test_imports_inside_functions_are_allowed_ones(name):
  for target, line, inside in _imports(name):
    if inside:
      assert target in LAZY_OK, (
          f'{MODULES[name]}:{line} imports {target} inside a function; '
          'import it at the top, or add it to LAZY_OK with the reason')


def test_no_import_cycle():
  graph = {n: {t for t, _, _ in _imports(n) if t in MODULES} for n in MODULES}
  state: dict[str, int] = {}  # 1: on the current path, 2: done

  def visit(n, path):
    state[n] = 1
    for m in sorted(graph[n]):
      if state.get(m) == 1:
        cycle = path[path.index(m):] + [m]
        raise AssertionError('import cycle: ' + ' -> '.join(cycle))
      if m not in state:
        visit(m, path + [m])
    state[n] = 2

  for n in sorted(graph):
    if n not in state:
      visit(n, [n])


def test_the_checks_can_fail():
  """The rules above catch what they are meant to (a guard on the test)."""
  assert _layer('r1jax.stages.grpo') > _layer('r1jax.run.loading')
  assert _stage_of('r1jax.stages.grpo_rollout') == 'grpo'
  assert _stage_of('r1jax.stages.rejection') != _stage_of('r1jax.stages.grpo')
  assert ('r1jax.run.problems', True) not in [
      (t, i) for t, _, i in _imports('r1jax.stages.rejection')]
  imports = _imports('r1jax.train')
  assert any(t == 'r1jax.stages.grpo' for t, _, _ in imports)

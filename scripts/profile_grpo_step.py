"""Where a GRPO step's time goes, op by op: bench_vs_trl.py's work, profiled.

Runs r1jax's side of scripts/bench_vs_trl.py (the same tiny random Qwen2,
prompts, group, length and update; bench_common.bench_r1jax_grpo), traces the
timed steps with jax.profiler, and sorts every XLA op the CPU ran by the
program it belongs to (the sampler's prefill and decode, the reference
log-prob pass, the update) and by what it does, read from the optimized HLO
(dumped with --xla_dump_to):

  matmul      a dot, or a fusion around one (the model's FLOPs)
  reduction   a fusion with a reduce and no dot (softmax sums, norms, the
              loss's means)
  elementwise a fusion of elementwise ops alone (activations, RoPE, masks,
              the optimizer)
  data        copies, transposes, slices, concatenates, gathers, scatters,
              dynamic updates (the KV cache), broadcasts
  other       the rest (sorts, custom calls, ...)

Container ops (while, conditional, call) are left out: their bodies' ops are
counted themselves. Times are summed op durations (ops on several threads
may overlap), so the shares, not the sums, are the figures to read.

    python scripts/profile_grpo_step.py            # bench_vs_trl's work
    python scripts/profile_grpo_step.py --tiny     # seconds, a check

The machine may be shared: the load average is printed next to the figures.
"""

import argparse
import collections
import os
import pathlib
import re
import sys
import tempfile

CATEGORIES = ('matmul', 'reduction', 'elementwise', 'data', 'other')
CONTAINERS = ('while', 'conditional', 'call')
DATA_OPS = ('copy', 'transpose', 'slice', 'dynamic-slice',
            'dynamic-update-slice', 'concatenate', 'gather', 'scatter', 'pad',
            'broadcast', 'reshape', 'bitcast', 'iota', 'copy-start',
            'copy-done', 'tuple', 'get-tuple-element', 'parameter',
            'constant')

_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S.*?\s([\w\-]+)\(')
_CALLS = re.compile(r'calls=%?([\w.\-]+)')
_COMP = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')


def parse_hlo(text: str) -> dict[str, str]:
  """{instruction name: category} of an optimized HLO module's text."""
  comps: dict[str, list[tuple[str, str, str]]] = {}
  current = None
  for line in text.splitlines():
    m = _COMP.match(line)
    if m and '=' not in line.split('{')[0]:
      current = comps.setdefault(m.group(1), [])
      continue
    m = _INSTR.match(line)
    if m and current is not None:
      calls = _CALLS.search(line)
      current.append((m.group(1), m.group(2), calls.group(1) if calls else ''))

  def opcodes(comp: str, seen=()) -> set[str]:
    out = set()
    for _, op, calls in comps.get(comp, ()):
      out.add(op)
      if calls and calls not in seen:
        out |= opcodes(calls, seen + (calls,))
    return out

  cats = {}
  for instrs in comps.values():
    for name, op, calls in instrs:
      inner = opcodes(calls) if calls else {op}
      if op in CONTAINERS:
        cats[name] = 'container'
      elif 'dot' in inner or 'convolution' in inner or op == 'dot':
        cats[name] = 'matmul'
      elif op == 'fusion' and ('reduce' in inner or 'reduce-window' in inner):
        cats[name] = 'reduction'
      elif op == 'fusion' and inner <= set(DATA_OPS):
        cats[name] = 'data'
      elif op == 'fusion':
        cats[name] = 'elementwise'
      elif op in DATA_OPS:
        cats[name] = 'data'
      elif op == 'reduce':
        cats[name] = 'reduction'
      elif op in ('add', 'multiply', 'subtract', 'divide', 'exponential',
                  'log', 'maximum', 'minimum', 'select', 'compare', 'convert',
                  'negate', 'rsqrt', 'tanh', 'logistic', 'power', 'sqrt'):
        cats[name] = 'elementwise'
      else:
        cats[name] = 'other'
  return cats


def module_categories(dump_dir: pathlib.Path) -> dict[str, dict[str, str]]:
  """{module name: {instruction: category}} from an --xla_dump_to folder."""
  out: dict[str, dict[str, str]] = {}
  for path in sorted(dump_dir.glob('*after_optimizations.txt')):
    text = path.read_text()
    m = re.search(r'HloModule\s+([\w.\-]+)', text)
    if m:
      out.setdefault(m.group(1), {}).update(parse_hlo(text))
  return out


def op_times(xplane: pathlib.Path) -> dict[tuple[str, str], list[float]]:
  """{(module, op): [durations in s]} of the XLA ops in a trace."""
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  times: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
  for plane in ProfileData.from_file(str(xplane)).planes:
    for line in plane.lines:
      for e in line.events:
        stats = dict(e.stats)
        if 'hlo_op' in stats and 'hlo_module' in stats:
          times[(stats['hlo_module'], stats['hlo_op'])].append(
              e.duration_ns / 1e9)
  return times


def span_of(module: str) -> str:
  """The step's timing span a jitted program belongs to."""
  name = module.lower()
  if 'update' in name:
    return 'update'
  if 'logprobs' in name:
    return 'reference'
  if any(k in name for k in ('prefill', 'decode', 'generate', 'sample')):
    return 'sample'
  return 'other'


def report(times, cats, steps: int, top: int) -> dict[str, dict[str, float]]:
  """Prints the split per span and category and the top ops; returns
  {span: {category: s per step}}."""
  split: dict[str, dict[str, float]] = collections.defaultdict(
      lambda: dict.fromkeys(CATEGORIES, 0.0))
  rows = []
  unknown = 0.0
  for (module, op), ds in times.items():
    mod_cats = cats.get(module)
    cat = mod_cats.get(op) if mod_cats else None
    if cat == 'container':
      continue
    if cat is None:
      unknown += sum(ds)
      cat = 'other'
    total = sum(ds) / steps
    split[span_of(module)][cat] += total
    rows.append((total, module, op, cat, len(ds) // steps))
  print(f'op time per step by program and kind (s; % of the program\'s '
        f'op time), over {steps} steps:')
  for span in ('sample', 'reference', 'update', 'other'):
    if span not in split:
      continue
    parts = split[span]
    tot = sum(parts.values())
    print(f'  {span:9s} {tot:.3f} s: ' + ', '.join(
        f'{c} {v:.3f} ({100 * v / tot:.0f}%)' for c, v in parts.items() if v))
  everything = sum(sum(p.values()) for p in split.values())
  mm = sum(p['matmul'] for p in split.values())
  print(f'  all       {everything:.3f} s, matmul {100 * mm / everything:.0f}%'
        + (f' ({unknown / steps:.3f} s of ops not found in the HLO dump)'
           if unknown else ''))
  print(f'the {top} most expensive ops (s per step, calls per step):')
  for total, module, op, cat, calls in sorted(rows, reverse=True)[:top]:
    print(f'  {total:.4f} s  {calls:5d}x  {cat:11s} {module}:{op}')
  return {k: dict(v) for k, v in split.items()}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sys.path.insert(0, str(pathlib.Path(__file__).parent))
  import bench_common  # pylint: disable=g-import-not-at-top
  bench_common.add_grpo_step_args(p)
  p.add_argument('--top', type=int, default=15, help='ops to list')
  p.add_argument('--keep', default='', help='keep the trace and HLO dump '
                 'in this folder (default: a temporary one)')
  args = bench_common.apply_tiny(p.parse_args(argv))
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(args.keep or tmp)
    dump = out / 'hlo'
    # Before jax starts: the optimized HLO of every program, to read ops by.
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_dump_to={dump} --xla_dump_hlo_as_text')
    model_dir = bench_common.write_grpo_model(args, out / 'model')
    records = bench_common.grpo_problems(args)
    print(bench_common.describe_grpo_work(args, model_dir))
    print(f'load average before: {bench_common.load_average()}')
    trace = out / 'trace'
    r_steps, r_info = bench_common.bench_r1jax_grpo(args, model_dir, records,
                                                    trace_dir=trace)
    bench_common.report_r1jax_grpo(args, r_steps, r_info)
    planes = sorted(trace.glob('**/*.xplane.pb'))
    if not planes:
      raise SystemExit(f'no trace written under {trace}')
    if not any(dump.glob('*after_optimizations.txt')):
      raise SystemExit(f'no HLO dumped under {dump}: XLA reads --xla_dump_to '
                       'when jax starts, so run this script as its own '
                       'process (not main() after jax has run)')
    report(op_times(planes[-1]), module_categories(dump), args.steps, args.top)
    print(f'load average after: {bench_common.load_average()}')


if __name__ == '__main__':
  main()

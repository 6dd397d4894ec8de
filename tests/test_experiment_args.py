"""The experiments' argument parser (experiments/common.py parse_arg) and the
arguments each experiments/*.py documents."""

import importlib
import pkgutil

import ml_collections
import pytest

import experiments
from experiments import common
from r1jax import config_checks

SPEC = dict(runlocal=False, seed=0, lr=1e-3, model='', seeds=(0,), tags=())


def test_empty_argument_gives_the_defaults():
  for arg in ('', None, ' , '):
    args = common.parse_arg(arg, **SPEC)
    assert isinstance(args, ml_collections.ConfigDict)
    assert args.to_dict() == SPEC


@pytest.mark.parametrize('arg, want', [
    ('runlocal', True),
    ('runlocal=true', True),
    ('runlocal=True', True),
    ('runlocal=1', True),
    ('runlocal=false', False),
    ('runlocal=False', False),
    (' runlocal ', True),
])
def test_bool_flags(arg, want):
  assert common.parse_arg(arg, **SPEC).runlocal is want


def test_key_values_take_the_type_of_their_default():
  args = common.parse_arg('runlocal,seed=3,lr=2e-4,model=qwen2.5-0.5b', **SPEC)
  assert args.runlocal is True
  assert args.seed == 3 and isinstance(args.seed, int)
  assert args.lr == 2e-4 and isinstance(args.lr, float)
  assert args.model == 'qwen2.5-0.5b'
  assert common.parse_arg('lr=1', **SPEC).lr == 1.0
  assert isinstance(common.parse_arg('lr=1', **SPEC).lr, float)


def test_a_tuple_value_runs_over_the_parts_that_are_not_keys():
  assert common.parse_arg('seeds=0,1,2', **SPEC).seeds == (0, 1, 2)
  args = common.parse_arg('seeds=3,4,runlocal,seed=1', **SPEC)
  assert (args.seeds, args.runlocal, args.seed) == ((3, 4), True, 1)
  assert common.parse_arg('tags=a,b', **SPEC).tags == ('a', 'b')  # str items
  assert common.parse_arg('seeds=', **SPEC).seeds == ()


def test_unknown_key_is_named_with_the_known_ones():
  with pytest.raises(ValueError) as e:
    common.parse_arg('runlocal,modle=x', **SPEC)
  msg = str(e.value)
  assert "'modle'" in msg
  for known in ('runlocal', 'seed=<int>', 'lr=<float>', 'model=<str>',
                'seeds=<int>,...'):
    assert known in msg, msg
  with pytest.raises(ValueError, match="unknown experiment argument 'x'"):
    common.parse_arg('x', runlocal=False)
  # A bare word after a key that is not a tuple is not a value of it.
  with pytest.raises(ValueError, match="unknown experiment argument '2'"):
    common.parse_arg('seed=1,2', **SPEC)


@pytest.mark.parametrize('arg, match', [
    ('seed=x', "seed='x': expected an int"),
    ('seed=1.5', 'expected an int'),
    ('lr=fast', 'expected a float'),
    ('runlocal=maybe', 'expected a bool'),
    ('seeds=0,one', 'expected an int'),
    ('seed', "'seed' needs a value: seed=<int>"),
    ('runlocal,runlocal', "'runlocal' given twice"),
])
def test_bad_values_are_clear_errors(arg, match):
  with pytest.raises(ValueError, match=match):
    common.parse_arg(arg, **SPEC)


def test_pack_arg_is_read_back():
  values = dict(runlocal=True, seed=3, lr=0.5, model='x', seeds=(1, 2))
  assert common.pack_arg(**values) == 'runlocal,seed=3,lr=0.5,model=x,seeds=1,2'
  assert common.parse_arg(common.pack_arg(**values), **SPEC).to_dict() == {
      **SPEC, **values}
  assert common.pack_arg(runlocal=False, model='') == ''


def test_eval_section_refuses_an_unknown_field():
  assert common.eval_section(num_problems=3).num_problems == 3
  with pytest.raises(KeyError, match='num_problem'):
    common.eval_section(num_problem=3)


# ====================================================== the experiments

ZERO_ARGS = ('', 'runlocal', 'model=smollm2-135m', 'model=tiny',
             'model=qwen2.5-math-1.5b,data=math', 'data=gsm8k', 'data=math',
             'data=synthetic', 'model=smollm2-135m,data=gsm8k',
             'model=qwen2.5-0.5b,data=gsm8k,runlocal', 'model=qwen2.5-7b',
             'runlocal,lora=4', 'model=qwen2.5-1.5b,lora=16', 'check',
             'model=smollm2-135m,data=synthetic,cpu',
             'model=smollm2-135m,data=gsm8k,cpu,lora=8')
DOCUMENTED = {
    'zero': ZERO_ARGS + ('data=code', 'data=mixed', 'data=code,runlocal'),
    'dapo': ZERO_ARGS, 'dr_grpo': ZERO_ARGS,
    'reasoning_rl': ZERO_ARGS, 'rejection': ZERO_ARGS, 'r1': ZERO_ARGS,
    'cold_start': ZERO_ARGS,
    'distill': ('', 'runlocal', 'compare', 'runlocal,compare',
                'compare,model=qwen2.5-0.5b'),
    'pretrain_tiny': ('', 'runlocal', 'check', 'runlocal,check', 'code',
                      'runlocal,code'),
    'r1_study': ('', 'runlocal'),
    'variants': ('', 'name=gspo', 'name=dapo,runlocal',
                 'name=cispo,model=qwen2.5-0.5b'),
}


def _experiments():
  return sorted(i.name for i in pkgutil.iter_modules(experiments.__path__))


def test_every_experiment_is_listed():
  configs = [n for n in _experiments()
             if hasattr(importlib.import_module(f'experiments.{n}'),
                        'get_config')]
  assert sorted(configs) == sorted(DOCUMENTED)
  assert 'common' in _experiments() and not hasattr(common, 'get_config')


@pytest.mark.parametrize('name, arg', [(n, a) for n, args in DOCUMENTED.items()
                                       for a in args])
def test_documented_arguments_build(name, arg):
  c = importlib.import_module(f'experiments.{name}').get_config(arg)
  stages = [c[s] for s in c.order] if 'order' in c else [c]
  for stage in stages:
    assert stage.stage in ('grpo', 'sft', 'rejection_sampling', 'evaluate')
    if 'runlocal' in arg and stage.get('train'):
      assert stage.train.steps <= 60


@pytest.mark.parametrize('name', sorted(DOCUMENTED))
def test_unknown_arguments_fail(name):
  module = importlib.import_module(f'experiments.{name}')
  with pytest.raises(ValueError, match="unknown experiment argument 'runlocl'"):
    module.get_config('runlocl')


def test_unknown_model_fails():
  from experiments import zero  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="model='gpt'; known: tiny, smollm2"):
    zero.get_config('model=gpt')


def test_real_model_block_and_runlocal_block():
  from experiments import zero  # pylint: disable=g-import-not-at-top
  tiny, real = zero.get_config(''), zero.get_config('model=qwen2.5-math-1.5b')
  assert tiny.model.pretrain_if_missing and not real.model.pretrain_if_missing
  assert (tiny.data.template, real.data.template) == ('r1_zero_short', 'r1_zero')
  assert real.eval.max_new_tokens == real.sampling.max_new_tokens == 1024
  assert real.eval.template == 'r1_zero' and real.eval.dataset == 'math500'
  local = zero.get_config('model=qwen2.5-math-1.5b,runlocal')
  assert local.sampling.max_new_tokens == local.eval.max_new_tokens == 48


def test_variants_by_name_and_the_configs_built_on_them():
  from experiments import dapo, dr_grpo, variants, zero  # pylint: disable=g-import-not-at-top
  assert variants.get_config('').to_dict() == zero.get_config('').to_dict()
  for module, name in ((dapo, 'dapo'), (dr_grpo, 'drgrpo')):
    rl = module.get_config('').rl
    for key, value in variants.VARIANTS[name].items():
      assert rl[key] == value, (name, key)
  c = variants.get_config('name=intellect2')
  assert c.rl.loss_options.delta == 4.0 and c.rl.epsilon_high == 0.28
  with pytest.raises(ValueError, match="unknown variant 'nope'"):
    variants.get_config('name=nope')


def test_sft_and_rejection_configs_carry_only_their_own_sections():
  from experiments import cold_start  # pylint: disable=g-import-not-at-top
  from experiments import rejection  # pylint: disable=g-import-not-at-top
  rs = rejection.get_config('')
  assert not {'rl', 'train', 'eval', 'export'} & set(rs.keys())
  for arg in ('', 'model=qwen2.5-0.5b'):
    ev = cold_start.get_config(arg).eval
    assert not {'every', 'at_start', 'num_texts'} & set(ev.keys())  # GRPO's


def test_config_checks_take_their_schema_from_the_experiments():
  # experiments/common.py has no get_config: the checks pass it over.
  for stage in ('sft', 'grpo', 'rejection_sampling'):
    defaults = config_checks.stage_defaults(stage)
    assert defaults and all(c.stage == stage for c in defaults)


def test_cpu_variant_sizes_a_real_model_for_two_cores():
  from experiments import zero  # pylint: disable=g-import-not-at-top
  c = zero.get_config('model=smollm2-135m,data=synthetic,cpu')
  paper = zero.get_config('model=smollm2-135m,data=synthetic')
  assert c.model.dtype == c.model.param_dtype == 'float32'
  assert c.rl.beta == 0.0 and paper.rl.beta > 0
  rows = c.rl.prompts_per_step * c.rl.group_size
  assert rows < paper.rl.prompts_per_step * paper.rl.group_size
  assert c.sampling.max_new_tokens == c.eval.max_new_tokens == 48
  assert c.data.difficulty.arithmetic.num_operands == 2
  assert c.data.template == c.eval.template == 'r1_zero'
  assert zero.get_config('model=smollm2-135m,cpu,lora=8').train.lr > c.train.lr
  with pytest.raises(ValueError, match='real model'):
    zero.get_config('cpu')

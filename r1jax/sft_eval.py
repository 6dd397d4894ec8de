"""End-of-run evaluation of an SFT / pretrained model on held-out problems."""

from typing import Any

from r1jax import evaluate
from r1jax.sampling import Sampler


def eval_records(config) -> list[dict]:
  """Held-out problems: synthetic test splits, or a named dataset."""
  ec = config.eval
  if ec.dataset in ('', 'synthetic'):
    from r1jax.data import synthetic  # pylint: disable=g-import-not-at-top
    tasks = list(ec.tasks)
    per_task = max(1, ec.num_problems // len(tasks))
    records = []
    corpus_difficulty = config.data.corpus.difficulty.to_dict()
    for task in tasks:
      knobs = ec.difficulty.to_dict().get(task, corpus_difficulty.get(task, {}))
      records += synthetic.generate(task, per_task, seed=ec.seed, split='test',
                                    **knobs)
    return records
  from r1jax.data import builders  # pylint: disable=g-import-not-at-top
  records = builders.load_dataset(ec.dataset, ec.split)
  return [records[i] for i in range(min(ec.num_problems, len(records)))]


def evaluate_base(config, model_cfg, graphdef, params, tokenizer,
                  mesh) -> dict[str, Any]:
  """pass@1, format rate and mean response length under the eval template."""
  ec = config.eval
  sampler = Sampler(graphdef, model_cfg, pad_id=tokenizer.pad_id,
                    eos_ids=[tokenizer.eos_id], mesh=mesh)
  records = eval_records(config)
  stats: dict[str, Any] = {}
  by_task: dict[str, list[dict]] = {}
  for r in records:
    by_task.setdefault(r.get('task', ec.dataset), []).append(r)
  all_stats = []
  for task, recs in by_task.items():
    s = evaluate.evaluate_problems(
        sampler, params, tokenizer, recs, template=ec.template,
        num_samples=ec.num_samples, temperature=ec.temperature,
        top_p=ec.top_p, max_new_tokens=ec.max_new_tokens,
        accuracy_reward=ec.reward or None, batch_size=ec.batch_size,
        seed=ec.seed)
    all_stats.append((len(recs), s))
    for k, v in s.items():
      if isinstance(v, float):
        stats[f'{task}/{k}'] = v
    stats.setdefault('samples', []).extend(s['samples'][:2])
  total = sum(n for n, _ in all_stats)
  for key in ('pass@1', 'format_rate', 'mean_length'):
    stats[key] = sum(n * s[key] for n, s in all_stats) / total
  print(f'held-out ({total} problems x {ec.num_samples} samples, '
        f'template {ec.template!r}, temperature {ec.temperature}): '
        f'pass@1 {stats["pass@1"]:.3f} | format rate '
        f'{stats["format_rate"]:.3f} | mean response length '
        f'{stats["mean_length"]:.1f} tokens', flush=True)
  return stats

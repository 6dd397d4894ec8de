"""Training stages of the recipe, one module each (`config.stage` picks one).

  sft    SFT / cold start / distillation / tiny-model pretraining
  grpo   GRPO reinforcement learning (R1-Zero, reasoning RL, DAPO, Dr. GRPO)

`common` holds what every stage needs, `run_records` what a stage's workdir
records of its run (run_config.json, done.json, the exported HF directory),
`errors` the ConfigError a config that cannot run raises. Each stage exposes
`train_and_evaluate(config, workdir) -> dict` of final metrics.
"""

"""What every stage needs to run, written once (the layer between the leaves
and the stages).

  * `checks`: config checks that fail at start-up with one line naming the key;
  * `loading`: the model + tokenizer a run starts from, sharded on its mesh;
  * `train_state`: the optimizer, the train state, resume;
  * `adapters`: LoRA (config.model.lora): what a stage trains and what it
    keeps frozen, the base's fingerprint on resume, the merged and PEFT
    exports;
  * `records`: what a workdir records (run config, done.json, metrics and
    completions files, the exported model) and the file names;
  * `problems`: the train and held-out problems of a config;
  * `console`: the compile counter, the progress line, phase timers.
  * `xla_cache`: where r1jax caches ($R1JAX_CACHE) and the persistent XLA
    compilation cache the entry points turn on.

Modules here import the leaves (model, sampling, rl, rewards, data, tokenizer,
checkpoint, metrics, parallel, errors) and each other, never a stage or an
entry point (tests/test_layering.py).
"""

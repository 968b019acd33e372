r"""Bidirectional GRU next-chord model on chord tokens of the bundled JSB Chorales.

    python -m musegen_jax.main --config=configs/bigru.py --workdir=runs/bigru
    python -m musegen_jax.main --config=configs/bigru.py:smoke --workdir=runs/bigru_smoke

The well-known design: a window of 50 chord tokens (one per sixteenth note)
-> embedding 100 -> three bidirectional GRU layers of 128 per direction ->
dense 256 with LeakyReLU -> softmax over the chord vocabulary, scored on the
token after the window only. Sampling slides the window in one compiled loop.

Any field can be overridden on the command line, e.g. `--config.batch_size=64`
or `--config.model.num_layers=2`; a misspelt key fails before any compute.
"""

from ml_collections import config_dict

from musegen_jax import config_defaults


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """Returns the default config; `arg="smoke"` gives a tiny CPU variant."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"Unknown config variant {arg!r}; known: 'smoke'.")
  config = config_dict.ConfigDict()

  # Objective (musegen_jax/tasks/<task>.py) and the global RNG seed.
  config.task = "lm"
  config.seed = 0

  config.model = config_dict.ConfigDict()
  config.model.name = "bigru"  # musegen_jax/models/gru.py
  config.model.embed_dim = 100
  # Per direction.
  config.model.hidden_size = 128
  config.model.num_layers = 3
  # Tokens the model reads; must equal data.seq_len.
  config.model.window = 50
  # The dense layer (LeakyReLU) between the GRU's final states and the softmax.
  config.model.dense_dim = 256
  # Between the GRU layers and before the dense layer.
  config.model.dropout_rate = 0.2
  # Compute dtype of the matmuls; parameters stay float32.
  config.model.dtype = "float32"
  # Recompute activations in the backward pass instead of storing them:
  # less memory for about one more forward pass.
  config.model.remat = False

  config.data = config_dict.ConfigDict()
  # A directory written by `python -m musegen_jax.prepare`; empty means the
  # bundled JSB Chorales, prepared into the cache on first use.
  config.data.dir = ""
  # One token per sixteenth note naming the sounding chord; the vocabulary
  # is built from the train split once and cached beside the shards.
  config.data.representation = "chord_token"
  # The window: the model reads seq_len tokens and predicts the next one.
  config.data.seq_len = 50
  # grain worker processes for the training pipeline (0: in the main process).
  config.data.num_workers = 2
  config.data.prefetch_buffer_size = 32
  # A shard record that does not parse: "error" (names shard and record) or
  # "skip" (a warning with the same).
  config.data.bad_records = "error"

  # Global batch size over all devices and hosts.
  config.batch_size = 64
  config.num_train_steps = 10_000
  config.learning_rate = 2e-3
  config.warmup_steps = 500
  # Final learning rate of the cosine decay, as a fraction of learning_rate.
  config.end_learning_rate_factor = 0.05
  config.weight_decay = 0.01
  config.adam_b1 = 0.9
  config.adam_b2 = 0.98
  config.grad_clip_norm = 1.0
  # A NaN/Inf loss or gradient is never applied. "stop": fail naming the step
  # and the last good checkpoint; "skip": go on and count skipped updates.
  config.nonfinite = "stop"

  config.log_every_steps = 50
  config.eval_every_steps = 1_000
  # Valid batches per eval; -1 evaluates the whole valid split.
  config.num_eval_batches = -1
  config.checkpoint_every_steps = 1_000
  # Checkpoints kept: the newest `keep_checkpoints` plus the best by valid loss.
  config.keep_checkpoints = 3
  # Every sample_every_steps (0: never) write MIDI + piano-roll PNG samples
  # to WORKDIR/samples/STEP/ and the piano rolls to TensorBoard.
  config.sample_every_steps = 2_000
  config.sample = config_dict.ConfigDict()
  config.sample.num_samples = 4
  # Sixteenth notes: 512 is 32 bars of 4/4.
  config.sample.length = 512
  config.sample.temperature = 1.0
  config.sample.top_k = 0
  config.sample.top_p = 0.95

  # parallelism ("jit" | "pmap"), mesh.fsdp, logical_axis_rules and
  # grad_accum_steps: see musegen_jax/config_defaults.py.
  config_defaults.add_parallelism(config)

  if arg == "smoke":
    config.model.embed_dim = 32
    config.model.hidden_size = 32
    config.model.num_layers = 2
    config.model.window = 16
    config.model.dense_dim = 64
    config.data.seq_len = 16
    config.data.num_workers = 0
    config.batch_size = 32
    config.num_train_steps = 300
    config.learning_rate = 3e-3
    config.warmup_steps = 10
    config.log_every_steps = 10
    config.eval_every_steps = 150
    config.num_eval_batches = 4
    config.checkpoint_every_steps = 150
    config.sample_every_steps = 300
    config.sample.num_samples = 2
    config.sample.length = 128
  return config

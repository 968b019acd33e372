r"""LSTM language model on performance events of the bundled JSB Chorales.

    python -m musegen_jax.main --config=configs/lstm.py --workdir=runs/lstm
    python -m musegen_jax.main --config=configs/lstm.py:smoke --workdir=runs/lstm_smoke

Any field can be overridden on the command line, e.g. `--config.batch_size=64`
or `--config.model.num_layers=2`; a misspelt key fails before any compute.
"""

from ml_collections import config_dict

from musegen_jax import config_defaults


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """Returns the default config; `arg="smoke"` gives a tiny CPU variant."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"Unknown config variant {arg!r}; known: 'smoke'.")
  # Shared keys (seed, batch, steps, Adam, logging, checkpoints, parallelism)
  # and the schedule: musegen_jax/config_defaults.py.
  config = config_defaults.default_config("lm")
  config_defaults.add_schedule(config)

  config.model = config_dict.ConfigDict()
  config.model.name = "lstm"  # musegen_jax/models/<name>.py
  config.model.embed_dim = 256
  config.model.hidden_size = 512
  config.model.num_layers = 3
  config.model.dropout_rate = 0.1
  # Compute dtype of the matmuls; parameters stay float32.
  config.model.dtype = "float32"
  # "" follows model.dtype; "bfloat16" runs only the matmuls (input
  # projections, recurrent steps, head, their gradients) in bfloat16,
  # summed in float32; the gates and states stay in model.dtype.
  config.model.matmul_dtype = ""
  # Recompute activations in the backward pass instead of storing them:
  # less memory for about one more forward pass.
  config.model.remat = False

  config.data = config_dict.ConfigDict()
  # A directory written by `python -m musegen_jax.prepare`; empty means the
  # bundled JSB Chorales, prepared into the cache on first use.
  config.data.dir = ""
  config.data.representation = "performance"
  # Tokens per training example (the model sees seq_len inputs and targets).
  config.data.seq_len = 256
  # grain worker processes for the training pipeline (0: in the main process).
  config.data.num_workers = 2
  config.data.prefetch_buffer_size = 32
  # A shard record that does not parse: "error" (names shard and record) or
  # "skip" (a warning with the same).
  config.data.bad_records = "error"
  # data.representation="miditok": MidiTok tokens, read by
  # musegen_jax/data/representations/miditok_tokens.py (REMI, TSD, MIDILike
  # or Structured; pitches inclusive; steps per beat up to max_beats; BPE
  # vocabulary size, 0 = none, learned on the train split and cached).
  config.data.miditok = config_dict.ConfigDict(dict(
      tokenizer="REMI", pitch_low=21, pitch_high=108, beat_resolution=8,
      max_beats=8, num_velocities=32, use_tempos=True, bpe_vocab_size=0))

  # Style conditioning (tasks/lm.py): with enabled=True, on a labelled
  # config.data.dir (prepare --labels=... or --input=music21:...), each window
  # starts with its piece's style token, replaced by "no style" with
  # probability dropout, so the model is also unconditional; sample with
  # --style=NAME [--guidance=W]. styles: filled from the data's labels.
  config.condition = config_dict.ConfigDict(dict(enabled=False, dropout=0.1))
  config.styles = ()

  # Samples: MIDI + piano-roll PNGs every sample_every_steps.
  config.sample = config_dict.ConfigDict()
  config.sample.num_samples = 4
  config.sample.length = 1_024
  config.sample.temperature = 1.0
  config.sample.top_k = 0
  config.sample.top_p = 0.95

  if arg == "smoke":
    config.model.embed_dim = 32
    config.model.hidden_size = 64
    config.model.num_layers = 2
    config.data.seq_len = 64
    config.data.num_workers = 0
    config.batch_size = 16
    config.num_train_steps = 500
    config.learning_rate = 3e-3
    config.warmup_steps = 10
    config.log_every_steps = 10
    config.eval_every_steps = 250
    config.num_eval_batches = 4
    config.checkpoint_every_steps = 250
    config.sample_every_steps = 500
    config.sample.num_samples = 2
    config.sample.length = 256
  return config

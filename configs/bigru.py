r"""Bidirectional GRU next-chord model on chord tokens of the bundled JSB Chorales.

    python -m musegen_jax.main --config=configs/bigru.py --workdir=runs/bigru
    python -m musegen_jax.main --config=configs/bigru.py:smoke --workdir=runs/bigru_smoke

The well-known design: a window of 50 chord tokens (one per sixteenth note)
-> embedding 100 -> three bidirectional GRU layers of 128 per direction ->
dense 256 with LeakyReLU -> softmax over the chord vocabulary, scored on the
token after the window only (training windows may start before a piece,
left-padded, so the model learns openings; evaluation slides the window to
every token). Sampling slides the window in one compiled loop.

Built on configs/lstm.py: the training, logging, checkpoint, sampling and
parallelism fields (and their comments) are there; this file sets what
differs. Any field can be overridden on the command line.
"""

from ml_collections import config_dict

from musegen_jax import config_defaults


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """Returns the default config; `arg="smoke"` gives a tiny CPU variant."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"Unknown config variant {arg!r}; known: 'smoke'.")
  config = config_defaults.sibling_config(__file__, "lstm", None)

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
  # "" follows model.dtype; "bfloat16" runs only the matmuls (input
  # projections, recurrent steps, their gradients) in bfloat16, summed in
  # float32; the gates and states stay in model.dtype.
  config.model.matmul_dtype = ""
  # Recompute each GRU layer's activations in the backward pass.
  config.model.remat = False

  # One token per sixteenth note naming the sounding chord; the vocabulary
  # is built from the train split once and cached beside the shards.
  config.data.representation = "chord_token"
  # The window: the model reads seq_len tokens and predicts the next one.
  config.data.seq_len = 50

  config.batch_size = 64
  config.num_train_steps = 10_000
  # Sixteenth notes: 512 is 32 bars of 4/4.
  config.sample.length = 512

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

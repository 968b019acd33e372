r"""Sequence VAE (MusicVAE-like) on 4-bar windows of JSB Chorale chord tokens.

    python -m musegen_jax.main --config=configs/vae.py --workdir=runs/vae
    python -m musegen_jax.main --config=configs/vae.py:smoke --workdir=runs/vae_smoke
    python -m musegen_jax.export --workdir=runs/vae --output=exports/vae
    python -m musegen_jax.sample --export=exports/vae --output_dir=vae_samples
    python -m musegen_jax.sample --export=exports/vae --output_dir=vae_walk \
        --endpoints=A.mid,B.mid --interpolate_steps=8

A window of 64 chord tokens (one per sixteenth note: four bars of 4/4) ->
embedding -> two bidirectional GRU layers -> a 128-dimensional Gaussian
latent -> a two-layer LSTM decoder whose initial state comes from z and which
reads z at every step. Trained on the ELBO with free bits and a linear beta
warmup (`vae`). Chord tokens sit on a fixed time grid, so every window is
exactly four bars and two pieces' windows line up step for step, which is
what makes interpolating between them meaningful; 64 performance events
would cover a varying, unaligned stretch of music.

Any field can be overridden on the command line, e.g. `--config.vae.beta=0.5`
or `--config.model.latent_dim=64`; a misspelt key fails before any compute.
"""

from ml_collections import config_dict

from musegen_jax import config_defaults


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """Returns the default config; `arg="smoke"` gives a tiny CPU variant."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"Unknown config variant {arg!r}; known: 'smoke'.")
  config = config_dict.ConfigDict()

  # Objective (musegen_jax/tasks/<task>.py) and the global RNG seed.
  config.task = "vae"
  config.seed = 0

  config.model = config_dict.ConfigDict()
  config.model.name = "vae"  # musegen_jax/models/vae.py
  # Token embedding, shared by the encoder and the decoder.
  config.model.embed_dim = 64
  # Bidirectional GRU encoder: hidden units per direction, and layers.
  config.model.encoder_hidden_size = 256
  config.model.encoder_num_layers = 2
  # LSTM decoder (z sets its initial state and is appended to every input).
  config.model.decoder_hidden_size = 512
  config.model.decoder_num_layers = 2
  # Size of z.
  config.model.latent_dim = 128
  # Between recurrent layers, encoder and decoder.
  config.model.dropout_rate = 0.2
  # Training only: the chance that a decoder input token is blanked (its
  # embedding zeroed; z stays), which makes the decoder rely on z.
  config.model.word_dropout = 0.0
  # Compute dtype of the matmuls; parameters stay float32.
  config.model.dtype = "float32"
  # Recompute activations in the backward pass instead of storing them:
  # less memory for about one more forward pass.
  config.model.remat = False

  # The ELBO: recon + beta * max(KL - free_bits, 0) per sequence.
  config.vae = config_dict.ConfigDict()
  # Largest KL weight (MusicVAE's small models use 0.2; 1 is the true ELBO).
  config.vae.beta = 0.2
  # Steps over which beta rises linearly from 0 (0: beta from the start).
  config.vae.beta_warmup_steps = 5_000
  # Nats of KL per sequence that cost nothing (8 per bar here): keeps the
  # strong autoregressive decoder from ignoring z (posterior collapse).
  config.vae.free_bits = 32.0

  config.data = config_dict.ConfigDict()
  # A directory written by `python -m musegen_jax.prepare`; empty means the
  # bundled JSB Chorales, prepared into the cache on first use.
  config.data.dir = ""
  # One token per sixteenth note naming the sounding chord; the vocabulary
  # is built from the train split once and cached beside the shards.
  config.data.representation = "chord_token"
  # Tokens per sequence the VAE encodes and reconstructs (64 = 4 bars).
  config.data.seq_len = 64
  # grain worker processes for the training pipeline (0: in the main process).
  config.data.num_workers = 2
  config.data.prefetch_buffer_size = 32
  # A shard record that does not parse: "error" (names shard and record) or
  # "skip" (a warning with the same).
  config.data.bad_records = "error"

  # Global batch size over all devices and hosts.
  config.batch_size = 64
  config.num_train_steps = 20_000
  config.learning_rate = 1e-3
  config.warmup_steps = 500
  # Final learning rate of the cosine decay, as a fraction of learning_rate.
  config.end_learning_rate_factor = 0.05
  config.weight_decay = 0.01
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.grad_clip_norm = 1.0
  # A NaN/Inf loss or gradient is never applied. "stop": fail naming the step
  # and the last good checkpoint; "skip": go on and count skipped updates.
  config.nonfinite = "stop"

  config.log_every_steps = 50
  config.eval_every_steps = 1_000
  # Valid batches per eval; -1 evaluates the whole valid split.
  config.num_eval_batches = -1
  config.checkpoint_every_steps = 1_000
  # Checkpoints kept: the newest `keep_checkpoints` plus the best by valid
  # negative ELBO.
  config.keep_checkpoints = 3
  # Every sample_every_steps (0: never) write MIDI + piano-roll PNG samples
  # decoded from the prior to WORKDIR/samples/STEP/ and the piano rolls to
  # TensorBoard.
  config.sample_every_steps = 2_000
  config.sample = config_dict.ConfigDict()
  config.sample.num_samples = 4
  # Tokens decoded per sample: the training window.
  config.sample.length = 64
  config.sample.temperature = 1.0
  config.sample.top_k = 0
  config.sample.top_p = 0.95

  # parallelism ("jit" | "pmap"), mesh.fsdp, logical_axis_rules and
  # grad_accum_steps: see musegen_jax/config_defaults.py.
  config_defaults.add_parallelism(config)

  if arg == "smoke":
    config.model.embed_dim = 16
    config.model.encoder_hidden_size = 32
    config.model.encoder_num_layers = 1
    config.model.decoder_hidden_size = 64
    config.model.decoder_num_layers = 1
    config.model.latent_dim = 16
    config.vae.beta_warmup_steps = 50
    config.vae.free_bits = 4.0
    config.data.seq_len = 32
    config.data.num_workers = 0
    config.batch_size = 16
    config.num_train_steps = 200
    config.learning_rate = 3e-3
    config.warmup_steps = 10
    config.log_every_steps = 10
    config.eval_every_steps = 100
    config.num_eval_batches = 4
    config.checkpoint_every_steps = 100
    config.sample_every_steps = 200
    config.sample.num_samples = 2
    config.sample.length = 32
  return config

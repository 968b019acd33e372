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
  # Training, logging, checkpoint, sampling and parallelism fields (and
  # their comments) are configs/lstm.py's; this file sets what differs.
  config = config_defaults.sibling_config(__file__, "lstm", None)

  # Objective (musegen_jax/tasks/vae.py).
  config.task = "vae"

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
  # "" follows model.dtype; "bfloat16" runs only the matmuls (the encoder
  # GRU's and decoder LSTM's projections and recurrent steps, the latent
  # and output heads, their gradients) in bfloat16, summed in float32.
  config.model.matmul_dtype = ""
  # Recompute activations in the backward pass instead of storing them:
  # less memory for about one more forward pass.
  config.model.remat = False

  # The ELBO: recon + beta * max(KL - free_bits, 0) per sequence.
  config.vae = config_dict.ConfigDict()
  # Largest KL weight (MusicVAE's small models use 0.2; 1 is the true ELBO).
  config.vae.beta = 0.2
  # Steps over which beta rises linearly from 0 (0: beta from the start).
  config.vae.beta_warmup_steps = 600
  # Nats of KL per sequence that cost nothing (8 per bar here): keeps the
  # strong autoregressive decoder from ignoring z (posterior collapse).
  config.vae.free_bits = 32.0

  # Style conditioning (tasks/vae.py, a conditional VAE): with enabled=True,
  # on a labelled config.data.dir the decoder also reads the piece's style,
  # "no style" with probability dropout, so the model is also unconditional;
  # sample with --style=NAME [--guidance=W]; --transfer decodes with the
  # target style. styles: filled from the data's labels.
  config.condition = config_dict.ConfigDict(dict(enabled=False, dropout=0.1))

  # One token per sixteenth note naming the sounding chord; the vocabulary
  # is built from the train split once and cached beside the shards.
  config.data.representation = "chord_token"
  # Tokens per sequence the VAE encodes and reconstructs (64 = 4 bars).
  config.data.seq_len = 64

  config.batch_size = 64
  config.learning_rate = 1e-3
  config.adam_b2 = 0.999
  # Sized to the bundled data (229 training chorales): without the average
  # below, valid negative ELBO stopped improving after about 1,000 steps
  # while train recon kept falling; with it, step 1,600 was the best, valid
  # 298.2, test 296.2 (BUILD_NOTES.md, "The VAE at full size"). 1,600 steps
  # take about 46 min on a 2-core CPU. More data wants more steps.
  config.num_train_steps = 1_600
  # Evaluate the average of the parameters (horizon ~500 steps): 8.5 nats
  # better on valid than the raw parameters at step 1,600.
  config.ema_decay = 0.998
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 200
  config.sample_every_steps = 800
  # Checkpoints: the newest `keep_checkpoints` plus the best by valid
  # negative ELBO. Samples (every sample_every_steps) are decoded from the
  # prior; sample.length tokens each: the training window.
  config.sample.length = 64

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
    config.ema_decay = 0.9  # A horizon that fits 200 steps.
    config.log_every_steps = 10
    config.eval_every_steps = 100
    config.num_eval_batches = 4
    config.checkpoint_every_steps = 100
    config.sample_every_steps = 200
    config.sample.num_samples = 2
    config.sample.length = 32
  return config

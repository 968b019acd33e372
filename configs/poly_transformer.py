r"""Transformer next-frame model of any polyphonic corpus (88-key frames).

    python -m musegen_jax.main --config=configs/poly_transformer.py \
        --workdir=runs/piano_transformer --config.data.dir=Piano-midi.de.pickle

Everything but the model, the input dropout and the schedule is
configs/poly_lstm.py's: the `pianoroll` task, next-frame Bernoulli NLL in
nats per frame over every frame of the split. The multi-hot frames enter
through a learned [88, d_model] input projection; local attention over 2
frames in each of 8 layers (each frame depends on the 8 before it). Pieces
longer than `data.max_frames` are trained on as random windows of it and
evaluated whole, window by window, each window reading the 8 frames before
it as context: the same history as one pass over the whole piece would give
(exactly so with relative attention and no absolute position encoding;
with the sinusoidal encoding, positions count from each window's start, as
in training). The settings were chosen on JSB Chorales valid
(configs/jsb_transformer.py: test NLL 8.122).
"""

from ml_collections import config_dict

from musegen_jax import config_defaults


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """Returns the default config; `arg="smoke"` gives a tiny CPU variant."""
  config = config_defaults.sibling_config(__file__, "poly_lstm", arg)
  config.model = config_dict.ConfigDict()
  config.model.name = "transformer"  # musegen_jax/models/<name>.py
  # 8 layers of window 2 (9 frames back): valid 8.095; 5 layers: 8.139.
  config.model.num_layers = 8
  config.model.d_model = 128
  config.model.num_heads = 4
  config.model.mlp_dim = 256
  # Longest sequence: data.max_frames for training and each evaluation
  # window (pieces of any length are read window by window), 1 + sample.length for
  # sampling (serial frames: data.max_tokens, and 1 + sample.length *
  # (sample.max_notes_per_frame + 1); see configs/jsb_transformer_serial.py).
  config.model.max_len = 160
  # "relative" (Music Transformer, Huang et al. 2018) or "absolute".
  config.model.attention = "relative"
  # > 0: local attention, each position sees itself and the
  # attention_window - 1 before it (0: the whole past).
  # 2 frames per layer (with 5 layers: valid 8.139, against 8.179 with 3
  # and 8.23-8.26 with 4, five seeds); 4 had been 0.06 better than 8, and 8
  # 0.05 better than the whole past (3 layers).
  config.model.attention_window = 2
  # "learned", "sinusoidal" or "none" (added to the projected frames).
  config.model.position_encoding = "sinusoidal"
  # On the embedded input and on each residual branch.
  config.model.dropout_rate = 0.5
  config.model.dtype = "float32"
  # "bfloat16": the matmuls in bfloat16, summed in float32 (configs/transformer.py).
  config.model.matmul_dtype = ""
  config.model.remat = False

  # Input keys dropped while training: jsb_lstm's 0.5 cost the Transformer
  # 0.2 nats valid (0.3: 8.41, 0.15: 8.39 with 3 layers, window 8).
  config.input_dropout_rate = 0.15

  if arg == "smoke":
    config.model.num_layers = 1
    config.model.d_model = 32
    config.model.num_heads = 2
    config.model.mlp_dim = 64
  else:
    config.num_train_steps = 2_500
  return config

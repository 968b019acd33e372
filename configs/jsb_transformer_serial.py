r"""Transformer on JSB Chorales with serial frames: each frame's keys, then end-of-frame.

    python -m musegen_jax.main --config=configs/jsb_transformer_serial.py \
        --workdir=runs/jsb_transformer_serial
    python -m musegen_jax.main --config=configs/jsb_transformer_serial.py:smoke \
        --workdir=runs/jsb_transformer_serial_smoke

configs/jsb_transformer.py's model (but attending to the whole past, with 3
layers and dropout 0.3) on configs/jsb_lstm_serial.py's frames:
the `pianoroll` task with `data.frame_model = "serial"`, NLL in nats per
frame summed over a frame's tokens (keys and end-of-frame), comparable with
the Bernoulli models'. The model reads the whole piece as up to
`data.max_tokens` tokens, so `model.max_len` covers it. Measured with this
config: test NLL 5.304 (valid 5.304 at the last step, 800, still falling;
41 min on a 2-core CPU, mostly shared with another run; BUILD_NOTES.md).
"""

from ml_collections import config_dict

from musegen_jax import config_defaults


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """Returns the default config; `arg="smoke"` gives a tiny CPU variant."""
  config = config_defaults.sibling_config(__file__, "jsb_lstm_serial", arg)
  config.model = config_defaults.sibling_config(
      __file__, "jsb_transformer", arg).model
  # Training reads data.max_tokens - 1 tokens; sampling sample.length = 64
  # frames feeds at most 1 + 64 * (sample.max_notes_per_frame + 1) = 577.
  config.model.max_len = 788
  # A frame is up to 5 tokens here: the Bernoulli model's local window
  # (a few frames) would see less than one frame back. Attend to the whole
  # past, with 3 layers and dropout 0.3 (as measured; BUILD_NOTES.md).
  config.model.attention_window = 0
  config.model.dropout_rate = 0.3
  if arg != "smoke":
    config.model.num_layers = 3
    # About 1.3 s per step on a 2-core CPU (788 tokens per piece).
    config.num_train_steps = 800
  return config

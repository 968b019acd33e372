r"""LSTM on JSB Chorales with serial frames: each frame's keys, then end-of-frame.

    python -m musegen_jax.main --config=configs/jsb_lstm_serial.py \
        --workdir=runs/jsb_lstm_serial
    python -m musegen_jax.main --config=configs/jsb_lstm_serial.py:smoke \
        --workdir=runs/jsb_lstm_serial_smoke

Everything but the frame model is configs/jsb_lstm.py's: the `pianoroll` task
on the bundled quarter-note chorales with the literature's split. A frame is
emitted as its active keys in ascending order and an end-of-frame token, one
masked softmax per token (a distribution over sets of keys), so the NLL in
nats per frame, summed over a frame's tokens, compares directly with the
Bernoulli models' (published test NLL: RNN-NADE 5.56, LSTM 8.45). Choose
models on valid; evaluate the best checkpoint on test after export:

    python -m musegen_jax.export --workdir=runs/jsb_lstm_serial \
        --output=exports/jsb_lstm_serial --checkpoint=best
    python -m musegen_jax.evaluate --export=exports/jsb_lstm_serial --split=test

Measured on 2 shared CPU cores (~1 step/s): stopped by Ctrl-C at step 735 of
1,000 after 15.5 minutes, the best checkpoint (step 700) had valid NLL 4.96
and test NLL 4.84 nats per frame.

This is configs/poly_lstm_serial.py (any corpus) with the bundled data.
"""

from ml_collections import config_dict

from musegen_jax import config_defaults


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """configs/poly_lstm_serial.py's config (and its `smoke` variant) on the
  bundled quarter-note chorales."""
  config = config_defaults.sibling_config(__file__, "poly_lstm_serial", arg)
  config.data.dir = ""  # The bundled JSB Chorales.
  return config

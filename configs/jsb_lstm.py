r"""LSTM on the JSB Chorales polyphonic benchmark (88-key frames, quarter notes).

    python -m musegen_jax.main --config=configs/jsb_lstm.py --workdir=runs/jsb_lstm
    python -m musegen_jax.main --config=configs/jsb_lstm.py:smoke --workdir=runs/jsb_lstm_smoke

The `pianoroll` task (musegen_jax/tasks/pianoroll.py): next-frame Bernoulli
NLL in nats per frame on the bundled quarter-note chorales, with the
literature's split (published test NLL: LSTM 8.45, GRU 8.43, TCN 8.10, Bai et
al. 2018). Measured with this config: test NLL 8.430 (best valid step 2,100,
valid 8.474; about 40 min on a 2-core CPU shared with another run).
Evaluate the best checkpoint on test after export:

    python -m musegen_jax.export --workdir=runs/jsb_lstm --output=exports/jsb_lstm \
        --checkpoint=best
    python -m musegen_jax.evaluate --export=exports/jsb_lstm --split=test

`--config.data.frame_model=serial` models each frame as its keys in ascending
order, then an end-of-frame token (configs/jsb_lstm_serial.py).

This is configs/poly_lstm.py (any corpus: `--config.data.dir=...`) with the
bundled data: its settings were chosen on this valid split.
"""

from ml_collections import config_dict

from musegen_jax import config_defaults


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """configs/poly_lstm.py's config (and its `smoke` variant) on the bundled
  quarter-note chorales."""
  config = config_defaults.sibling_config(__file__, "poly_lstm", arg)
  config.data.dir = ""  # The bundled JSB Chorales.
  return config

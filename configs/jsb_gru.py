r"""GRU on the JSB Chorales polyphonic benchmark (88-key frames, quarter notes).

    python -m musegen_jax.main --config=configs/jsb_gru.py --workdir=runs/jsb_gru
    python -m musegen_jax.main --config=configs/jsb_gru.py:smoke --workdir=runs/jsb_gru_smoke

configs/jsb_lstm.py with a stacked causal GRU (musegen_jax/models/gru.py) in
place of the LSTM, 2 x 384 wide: same task, data, regularization, parameter
average and schedule (published test NLL: GRU 8.43, LSTM 8.45, Bai et al.
2018). Measured: test NLL 8.405 (best valid step 1,800; BUILD_NOTES.md);
at jsb_lstm's width of 256, 8.505. Evaluate the best checkpoint on test
after export:

    python -m musegen_jax.export --workdir=runs/jsb_gru --output=exports/jsb_gru \
        --checkpoint=best
    python -m musegen_jax.evaluate --export=exports/jsb_gru --split=test

This is configs/poly_gru.py (any corpus) with the bundled data.
"""

from ml_collections import config_dict

from musegen_jax import config_defaults


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """configs/poly_gru.py's config (and its `smoke` variant) on the bundled
  quarter-note chorales."""
  config = config_defaults.sibling_config(__file__, "poly_gru", arg)
  config.data.dir = ""  # The bundled JSB Chorales.
  return config

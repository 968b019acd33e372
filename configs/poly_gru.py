r"""GRU next-frame model of any polyphonic corpus (88-key frames).

    python -m musegen_jax.main --config=configs/poly_gru.py --workdir=runs/muse_gru \
        --config.data.dir=MuseData.pickle

configs/poly_lstm.py with a stacked causal GRU (musegen_jax/models/gru.py) in
place of the LSTM, 2 x 384 wide: same task, data, regularization, parameter
average and schedule, chosen on JSB Chorales valid (configs/jsb_gru.py: test
NLL 8.405). Long pieces are trained on in windows of `data.max_frames` and
evaluated whole with the GRU's state carried from window to window.
"""

from ml_collections import config_dict

from musegen_jax import config_defaults


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """configs/poly_lstm.py's config (and its `smoke` variant) with a GRU."""
  config = config_defaults.sibling_config(__file__, "poly_lstm", arg)
  config.model.name = "gru"  # musegen_jax/models/gru.py
  if arg != "smoke":
    config.model.hidden_size = 384
  return config

r"""Transformer on the JSB Chorales polyphonic benchmark (88-key frames, quarter notes).

    python -m musegen_jax.main --config=configs/jsb_transformer.py \
        --workdir=runs/jsb_transformer
    python -m musegen_jax.main --config=configs/jsb_transformer.py:smoke \
        --workdir=runs/jsb_transformer_smoke

Everything but the model, the input dropout and the schedule is
configs/jsb_lstm.py's: the `pianoroll` task, next-frame Bernoulli NLL in nats
per frame, the literature's split. The multi-hot frames enter through a
learned [88, d_model] input projection. Measured with this config: test NLL
8.122 (best valid step 2,400, valid 8.095; 23 min on a 2-core CPU shared with
another run; BUILD_NOTES.md). What took it there from 8.56: a lighter input
dropout (0.15 against the LSTM's 0.5), local attention over 2 frames (each
layer sees the current and the previous one), residual dropout 0.5 and 8
layers. Distilled from an ensemble of five of its variants
(`--config.distill_teachers=...`, `--config.distill_weight=0.7`, with
`--config.model.dropout_rate=0.2 --config.num_train_steps=3000`; README.md):
test NLL 7.908, valid 7.953.

This is configs/poly_transformer.py (any corpus) with the bundled data.
"""

from ml_collections import config_dict

from musegen_jax import config_defaults


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """configs/poly_transformer.py's config (and its `smoke` variant) on the
  bundled quarter-note chorales."""
  config = config_defaults.sibling_config(__file__, "poly_transformer", arg)
  config.data.dir = ""  # The bundled JSB Chorales.
  return config

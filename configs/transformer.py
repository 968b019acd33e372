r"""Transformer language model on performance events of the bundled JSB Chorales.

    python -m musegen_jax.main --config=configs/transformer.py --workdir=runs/transformer
    python -m musegen_jax.main --config=configs/transformer.py:smoke \
        --workdir=runs/transformer_smoke

A decoder-only, pre-LayerNorm Transformer with Music Transformer relative
attention (musegen_jax/models/transformer.py). Any field can be overridden on
the command line, e.g. `--config.model.attention=absolute` or
`--config.model.num_layers=6`; a misspelt key fails before any compute.
"""

from ml_collections import config_dict

from musegen_jax import config_defaults


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """Returns the default config; `arg="smoke"` gives a tiny CPU variant."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"Unknown config variant {arg!r}; known: 'smoke'.")
  # Task, data, training, logging, checkpoint, sampling and parallelism
  # fields (and their comments) are configs/lstm.py's; this file sets what
  # differs. The smoke variant: configs/lstm.py:smoke with a tiny Transformer.
  config = config_defaults.sibling_config(__file__, "lstm", arg)

  config.model = config_dict.ConfigDict()
  config.model.name = "transformer"  # musegen_jax/models/<name>.py
  config.model.num_layers = 4
  config.model.d_model = 256
  config.model.num_heads = 8
  config.model.mlp_dim = 1024
  # Longest sequence the model runs on: data.seq_len for training, primer +
  # sample.length for sampling (whose key/value cache holds just those).
  config.model.max_len = 2048
  # "relative" (Music Transformer, Huang et al. 2018) or "absolute".
  config.model.attention = "relative"
  # "learned", "sinusoidal" or "none" (added to the token embeddings).
  config.model.position_encoding = "sinusoidal"
  # Training attention: "fused" (jax.nn.dot_product_attention: a GPU's fused
  # kernel), "einsum" (hand-written backward pass, faster on CPU) or "auto"
  # (einsum on CPU, fused elsewhere).
  config.model.attention_impl = "auto"
  # > 0: local attention, each position sees itself and the
  # attention_window - 1 before it (0: the whole past).
  config.model.attention_window = 0
  # On the embeddings and on each residual branch (not on attention weights).
  config.model.dropout_rate = 0.1
  # Compute dtype of the activations and matmuls; parameters stay float32.
  config.model.dtype = "float32"
  # "" follows model.dtype; "bfloat16" runs only the matmuls in bfloat16
  # (summed in float32; activations stay in model.dtype). Any bfloat16
  # matmul goes through kernels.matmul.matmul, the form a CPU's AMX units
  # take.
  config.model.matmul_dtype = ""
  # Recompute activations in the backward pass instead of storing them:
  # less memory for about one more forward pass.
  config.model.remat = False

  if arg == "smoke":
    config.model.num_layers = 2
    config.model.d_model = 32
    config.model.num_heads = 4
    config.model.mlp_dim = 64
    config.model.max_len = 512
    return config

  # Tokens per training example (the model sees seq_len inputs and targets).
  config.data.seq_len = 512
  config.batch_size = 16
  config.learning_rate = 5e-4
  config.warmup_steps = 1_000
  return config

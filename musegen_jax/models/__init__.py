"""Pure Flax linen model families, one file each, and the config -> module factory."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from ml_collections import config_dict

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def get_dtype(name: str):
  """Maps a config dtype name to a jnp dtype."""
  if name not in _DTYPES:
    raise ValueError(f"config.model.dtype={name!r}; allowed: {sorted(_DTYPES)}")
  return _DTYPES[name]


def matmul_dtype_name(model_config: config_dict.ConfigDict) -> str:
  """The dtype the model's matmuls take their operands in.

  `model.matmul_dtype`: "" (the default, or absent) follows model.dtype;
  "bfloat16" with model.dtype "float32" keeps the activations in float32
  and runs only the matmuls in bfloat16.
  """
  name = model_config.get("matmul_dtype", "") or model_config.dtype
  if name not in _DTYPES:
    raise ValueError(f"config.model.matmul_dtype={name!r}; allowed: '' (as "
                     f"model.dtype) or one of {sorted(_DTYPES)}")
  return name


def matmul_dtype(model_config: config_dict.ConfigDict):
  """The models' `matmul_dtype` attribute: the operand dtype when their
  matmuls go through `kernels.matmul.matmul` and the recurrences' own
  low-precision matmuls (bfloat16 products, float32 sums), else None (plain
  dots in model.dtype)."""
  dtype = _DTYPES[matmul_dtype_name(model_config)]
  return None if dtype == jnp.float32 else dtype


MODELS = ("bigru", "gru", "lstm", "transformer")


def create_model(model_config: config_dict.ConfigDict, vocab_size: int,
                 pad_id: int = 0) -> nn.Module:
  """Builds the model named by `model_config.name` from its config fields.

  `pad_id` is the token a windowed model (bigru) pads short windows with.
  """
  name = model_config.name
  common = dict(vocab_size=vocab_size, dropout_rate=model_config.dropout_rate,
                dtype=get_dtype(model_config.dtype),
                remat=model_config.get("remat", False))
  if name == "transformer":
    from musegen_jax.models import transformer
    return transformer.TransformerLanguageModel(
        num_layers=model_config.num_layers,
        d_model=model_config.d_model,
        num_heads=model_config.num_heads,
        mlp_dim=model_config.mlp_dim,
        max_len=model_config.max_len,
        attention=model_config.attention,
        position_encoding=model_config.position_encoding,
        attention_impl=model_config.get("attention_impl", "auto"),
        attention_window=model_config.get("attention_window", 0),
        matmul_dtype=matmul_dtype(model_config),
        **common)
  # The recurrent models: an embedding and stacked layers.
  common.update(embed_dim=model_config.embed_dim,
                hidden_size=model_config.hidden_size,
                num_layers=model_config.num_layers)
  if name == "lstm":
    from musegen_jax.models import lstm
    return lstm.LSTMLanguageModel(matmul_dtype=matmul_dtype(model_config),
                                  **common)
  if name == "gru":
    from musegen_jax.models import gru
    return gru.GRULanguageModel(matmul_dtype=matmul_dtype(model_config),
                                **common)
  if name == "bigru":
    from musegen_jax.models import gru
    return gru.BiGRUWindowModel(window=model_config.window,
                                dense_dim=model_config.dense_dim,
                                pad_id=pad_id,
                                matmul_dtype=matmul_dtype(model_config),
                                **common)
  raise ValueError(f"config.model.name={name!r}; known models: "
                   f"{sorted(MODELS)}")

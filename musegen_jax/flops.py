"""Analytic FLOPs of one training step, from a config: what MFU divides by.

XLA's `cost_analysis()` counts each while-loop body once, so it misses most of
a recurrent model's matmuls; these counts come from the models' own formulas
(`train_matmul_flops` / `train_flops` beside each model) at the config's
shapes. The benchmarks (`bench.py`) and the ahead-of-time compiles (`aot.py`)
both report them.
"""

from __future__ import annotations

from typing import Any

from ml_collections import config_dict


def train_step_flops(config: config_dict.ConfigDict, vocab_size: int | None
                     ) -> tuple[int | None, str]:
  """(FLOPs of one train step over the global batch, how they were counted).

  None for the models and tasks without a count (the VAE, the piano-roll
  task's frame models).
  """
  from musegen_jax.models import gru, lstm, transformer, wavegan  # pylint: disable=import-outside-toplevel
  m: Any = config.model
  source = "analytic matmul count (backward = 2x forward)"
  if config.task == "gan" and (m.get("generator", "waveform") != "waveform" or
                               m.get("discriminators", "waveform") != "waveform"
                               or config.gan.get("r1_weight", 0.0) > 0):
    return None, "none (counted for WaveGAN's own networks only; see XLA's)"
  if config.task == "gan" and m.name == "wavegan":
    return wavegan.train_flops(m.dim, config.data.slice_len, config.batch_size,
                               config.gan.critic_steps, latent_dim=m.latent_dim,
                               kernel_size=m.kernel_size), source
  if config.task != "lm" or vocab_size is None:
    return None, "none (no analytic count for this task or model)"
  shape = dict(vocab_size=int(vocab_size), num_layers=m.num_layers,
               batch_size=config.batch_size, seq_len=config.data.seq_len)
  if m.name == "lstm":
    return lstm.train_matmul_flops(embed_dim=m.embed_dim,
                                   hidden_size=m.hidden_size, **shape), source
  if m.name == "transformer":
    return transformer.train_matmul_flops(d_model=m.d_model, mlp_dim=m.mlp_dim,
                                          attention=m.attention, **shape), source
  if m.name == "bigru":
    return gru.train_matmul_flops(embed_dim=m.embed_dim, hidden_size=m.hidden_size,
                                  bidirectional=True, dense_dim=m.dense_dim,
                                  last_only=True, **shape), source
  return None, "none (no analytic count for this task or model)"


def xla_flops(compiled) -> float | None:
  """The FLOPs XLA's cost analysis gives a compiled program (per device for a
  program over a mesh), or None where it gives none (or a negative number)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return None if flops is None or flops < 0 else float(flops)

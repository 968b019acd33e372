"""Analytic FLOPs of one training step, from a config: what MFU divides by.

XLA's `cost_analysis()` counts each while-loop body once, so it misses most of
a recurrent model's matmuls; these counts come from each model's formula
below at the config's shapes. The benchmarks (`bench.py`) and the ahead-of-time compiles (`aot.py`)
both report them.
"""

from __future__ import annotations

from typing import Any

from ml_collections import config_dict

from musegen_jax.models import wavegan


def lstm_train_flops(*, vocab_size: int, embed_dim: int, hidden_size: int,
                     num_layers: int, batch_size: int, seq_len: int) -> int:
  """Matmul FLOPs of one training step (forward + backward = 3x forward).

  Counts the input projections, the recurrent matmuls and the output head
  (2 FLOPs per multiply-add); element-wise work, the embedding gather and the
  optimizer are left out.
  """
  tokens = batch_size * seq_len
  gates = 4 * hidden_size
  forward = 0
  for layer in range(num_layers):
    features = embed_dim if layer == 0 else hidden_size
    forward += 2 * tokens * (features + hidden_size) * gates
  forward += 2 * tokens * hidden_size * vocab_size
  return 3 * forward


def gru_train_flops(*, vocab_size: int, embed_dim: int, hidden_size: int,
                    num_layers: int, batch_size: int, seq_len: int,
                    bidirectional: bool, dense_dim: int = 0,
                    last_only: bool = False) -> int:
  """Matmul FLOPs of one training step (forward + backward = 3x forward).

  Input projections and recurrent matmuls of every layer and direction, and
  the head (at every position, or only after the window with `last_only`,
  through a dense layer of `dense_dim` when > 0).
  """
  tokens = batch_size * seq_len
  dirs = 2 if bidirectional else 1
  gates = 3 * hidden_size
  forward = 0
  for layer in range(num_layers):
    features = embed_dim if layer == 0 else dirs * hidden_size
    forward += 2 * dirs * tokens * (features + hidden_size) * gates
  head_rows = batch_size if last_only else tokens
  out = dirs * hidden_size
  if dense_dim:
    forward += 2 * head_rows * out * dense_dim
    out = dense_dim
  forward += 2 * head_rows * out * vocab_size
  return 3 * forward


def transformer_train_flops(*, vocab_size: int, d_model: int, num_layers: int,
                            mlp_dim: int, batch_size: int, seq_len: int,
                            attention: str = "absolute") -> int:
  """Matmul FLOPs of one training step (forward + backward = 3x forward).

  Counts the QKV, output, MLP and head projections and the attention matmuls
  (Q K^T and P V over the whole [seq_len, seq_len] square, as dense kernels
  compute it, plus Q E_r^T for relative attention); 2 FLOPs per
  multiply-add. Element-wise work, softmax, the embedding gather and the
  optimizer are left out.
  """
  tokens = batch_size * seq_len
  per_layer = 2 * tokens * d_model * (3 * d_model + d_model + 2 * mlp_dim)
  attention_pairs = 2 if attention == "absolute" else 3
  per_layer += attention_pairs * 2 * tokens * seq_len * d_model
  forward = num_layers * per_layer + 2 * tokens * d_model * vocab_size
  return 3 * forward


def _wavegan_conv_flops(dim: int, slice_len: int, batch: int, kernel_size: int
                        ) -> tuple[list[int], list[int]]:
  """Per-layer forward matmul FLOPs of (generator, discriminator) convs."""
  strides = wavegan.check_slice_len(slice_len)
  dim_mul = 16 if slice_len == 16384 else 32
  gen, length, cin = [], 16, dim_mul * dim
  for i, stride in enumerate(strides):
    cout = 1 if i == len(strides) - 1 else dim * max(dim_mul >> (i + 1), 1)
    # Every input position meets every tap: length * K * cin * cout MACs.
    gen.append(2 * batch * length * kernel_size * cin * cout)
    length, cin = length * stride, cout
  disc, length, cin = [], slice_len, 1
  for i, stride in enumerate(strides):
    length, cout = length // stride, dim << i
    # Every output position reads K taps.
    disc.append(2 * batch * length * kernel_size * cin * cout)
    cin = cout
  return gen, disc


def wavegan_train_flops(dim: int, slice_len: int, batch: int, critic_steps: int, *,
                        latent_dim: int = 100, kernel_size: int = 25) -> int:
  """Estimated matmul FLOPs of one WGAN-GP step, for MFU reporting.

  Counts convolution and dense MACs as 2 FLOPs (the true arithmetic, not
  padded taps); element-wise work and the optimizer are left out. With Gf
  and Df the forward FLOPs of G and D on `batch` examples, and forward +
  backward counted as 3x forward:
  - each critic step: G forward (no G gradient) + D forward and backward on
    the real and the fake batch (2 x 3 Df) + the gradient penalty on the
    interpolates, counted as one D forward and backward (3 Df) plus one more
    for its double backward (3 Df): Gf + 12 Df;
  - the generator step: G and D forward and backward: 3 Gf + 3 Df.

  Args:
    dim: model width (`dim` of both networks).
    slice_len: samples per example.
    batch: examples per batch.
    critic_steps: discriminator updates per generator update.
    latent_dim: generator input size.
    kernel_size: convolution kernel size.

  Returns:
    FLOPs of `critic_steps` D updates and one G update.
  """
  gen, disc = _wavegan_conv_flops(dim, slice_len, batch, kernel_size)
  dim_mul = 16 if slice_len == 16384 else 32
  g_fwd = sum(gen) + 2 * batch * latent_dim * 16 * dim_mul * dim
  d_fwd = sum(disc) + 2 * batch * 16 * dim_mul * dim
  return critic_steps * (g_fwd + 12 * d_fwd) + 3 * g_fwd + 3 * d_fwd


def train_step_flops(config: config_dict.ConfigDict, vocab_size: int | None
                     ) -> tuple[int | None, str]:
  """(FLOPs of one train step over the global batch, how they were counted).

  None for the models and tasks without a count (the VAE, the piano-roll
  task's frame models).
  """
  m: Any = config.model
  source = "analytic matmul count (backward = 2x forward)"
  if config.task == "gan" and (m.get("generator", "waveform") != "waveform" or
                               m.get("discriminators", "waveform") != "waveform"
                               or config.gan.get("r1_weight", 0.0) > 0):
    return None, "none (counted for WaveGAN's own networks only; see XLA's)"
  if config.task == "gan" and m.name == "wavegan":
    return wavegan_train_flops(m.dim, config.data.slice_len, config.batch_size,
                               config.gan.critic_steps, latent_dim=m.latent_dim,
                               kernel_size=m.kernel_size), source
  if config.task != "lm" or vocab_size is None:
    return None, "none (no analytic count for this task or model)"
  shape = dict(vocab_size=int(vocab_size), num_layers=m.num_layers,
               batch_size=config.batch_size, seq_len=config.data.seq_len)
  if m.name == "lstm":
    return lstm_train_flops(embed_dim=m.embed_dim,
                                   hidden_size=m.hidden_size, **shape), source
  if m.name == "transformer":
    return transformer_train_flops(d_model=m.d_model, mlp_dim=m.mlp_dim,
                                          attention=m.attention, **shape), source
  if m.name == "bigru":
    return gru_train_flops(embed_dim=m.embed_dim, hidden_size=m.hidden_size,
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

"""A small convolutional style classifier over piano-roll windows.

The frames of a window are a 1-D signal in time whose channels are the keys
(the multi-hot roll): blocks of convolution over time, layer normalisation,
GELU and max-pooling by 2 shorten it while widening the channels, as in the
1-D CNN genre classifiers of music information retrieval. Mean and max over
the remaining time steps feed one dense layer that gives the styles' logits,
so a window of any length can be scored.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def _logical(init, names: tuple[str, ...]):
  return nn.with_logical_partitioning(init, names)


class ConvStyleClassifier(nn.Module):
  """[batch, frames, keys] 0/1 windows -> [batch, num_classes] logits.

  Attributes:
    num_classes: the styles.
    features: output channels of each convolution block.
    kernel_size: the convolutions' width in frames.
    dropout_rate: before the dense head.
    dtype: compute dtype; parameters stay float32.
  """

  num_classes: int
  features: Sequence[int] = (64, 128, 256)
  kernel_size: int = 5
  dropout_rate: float = 0.3
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, frames: Array, *, train: bool = False) -> Array:
    x = frames.astype(self.dtype)
    for i, width in enumerate(self.features):
      x = nn.Conv(width, (self.kernel_size,), dtype=self.dtype, name=f"conv_{i}",
                  kernel_init=_logical(nn.initializers.lecun_normal(),
                                       ("kernel", "conv_in", "conv_out")),
                  bias_init=_logical(nn.initializers.zeros, ("conv_out",)))(x)
      x = nn.LayerNorm(dtype=self.dtype, name=f"norm_{i}")(x)
      x = nn.gelu(x)
      if x.shape[1] > 1:
        x = nn.max_pool(x, (2,), strides=(2,))
    x = jnp.concatenate([x.mean(axis=1), x.max(axis=1)], axis=-1)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=jnp.float32, name="head",
                    kernel_init=_logical(nn.initializers.lecun_normal(),
                                         ("embed", "vocab")))(x)

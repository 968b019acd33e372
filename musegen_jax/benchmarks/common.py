"""What the JAX benchmarks and the PyTorch reference share: the fixed train
shape and how the machine and memory are described. No flags, no jax."""

from __future__ import annotations

import os
import platform
import resource

# The fixed shape of the LSTM train benchmark (both frameworks).
TRAIN_SHAPE = {"vocab_size": 390, "embed_dim": 256, "hidden_size": 512,
               "num_layers": 3, "dropout_rate": 0.1, "batch_size": 32,
               "seq_len": 128}

# The fixed shape of the WaveGAN train benchmark (both frameworks): one step
# is `critic_steps` WGAN-GP critic updates and one generator update.
GAN_TRAIN_SHAPE = {"dim": 32, "slice_len": 16384, "batch_size": 16,
                   "critic_steps": 5, "latent_dim": 100, "kernel_size": 25,
                   "phase_shuffle": 2, "gp_weight": 10.0}

# The fixed shape of the Transformer train benchmark (both frameworks):
# pre-LayerNorm decoder, learned absolute positions, loss on every position.
TRANSFORMER_TRAIN_SHAPE = {"vocab_size": 390, "d_model": 256, "num_layers": 4,
                           "num_heads": 8, "mlp_dim": 1024, "dropout_rate": 0.1,
                           "batch_size": 8, "seq_len": 256}

# The fixed shape of the bidirectional GRU train benchmark (both frameworks):
# a window of 50 chord tokens, loss on the token after it only.
BIGRU_TRAIN_SHAPE = {"vocab_size": 201, "embed_dim": 100, "hidden_size": 128,
                     "num_layers": 3, "window": 50, "dense_dim": 256,
                     "dropout_rate": 0.2, "batch_size": 64}


def cpu_model() -> str:
  """The CPU's model name (from /proc/cpuinfo on Linux)."""
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
  """Peak resident memory of this process in MiB (Linux reports KiB)."""
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

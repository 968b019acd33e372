"""Log-mel spectrograms and the Frechet distance between their statistics.

The GAN's evaluation compares generated and held-out real clips by the mean and
covariance of their log-mel frames (a Frechet distance, as FID and FAD do with
network embeddings; here the features are the log-mel frames themselves, so no
pretrained network is needed). Statistics are accumulated as sums, so any
number of batches, on any number of devices, add up before the distance.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

Array = jax.Array


def _hz_to_mel(hz):
  return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def _mel_to_hz(mel):
  return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int,
                   fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
  """Triangular filters on the HTK mel scale: [n_fft // 2 + 1, n_mels] float32.

  Each filter rises from the centre of the previous one to its own centre and
  falls to the next one's, with a peak of 1.
  """
  fmax = sample_rate / 2 if fmax is None else fmax
  if not 0 <= fmin < fmax <= sample_rate / 2:
    raise ValueError(f"Need 0 <= fmin ({fmin}) < fmax ({fmax}) <= "
                     f"sample_rate / 2 ({sample_rate / 2}).")
  bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
  edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
  lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
  rising = (bins[:, None] - lower) / (centre - lower)
  falling = (upper - bins[:, None]) / (upper - centre)
  return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def log_mel(audio: Array, sample_rate: int, *, n_fft: int = 1024, hop: int = 256,
            n_mels: int = 64, floor: float = 1e-5) -> Array:
  """Log-mel power spectrogram of [batch, length] audio: [batch, frames, n_mels].

  Frames of `n_fft` samples every `hop` samples (no padding), Hann window.
  """
  length = audio.shape[-1]
  if length < n_fft:
    raise ValueError(f"Audio of {length} samples is shorter than n_fft={n_fft}.")
  num_frames = 1 + (length - n_fft) // hop
  index = np.arange(num_frames)[:, None] * hop + np.arange(n_fft)[None, :]
  window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
  frames = audio[..., index].astype(jnp.float32) * window
  power = jnp.abs(jnp.fft.rfft(frames, axis=-1)) ** 2
  mel = power @ mel_filterbank(sample_rate, n_fft, n_mels)
  return jnp.log(mel + floor)


def feature_sums(features: Array) -> dict[str, Array]:
  """Sums that `stats_from_sums` turns into a mean and covariance.

  Args:
    features: [..., dim]; every leading index is one observation.
  """
  x = features.reshape(-1, features.shape[-1]).astype(jnp.float32)
  return {"sum": jnp.sum(x, 0), "outer": x.T @ x,
          "count": jnp.asarray(x.shape[0], jnp.float32)}


def stats_from_sums(sums) -> tuple[np.ndarray, np.ndarray]:
  """(mean [dim], covariance [dim, dim]) in float64 from `feature_sums` totals."""
  n = float(sums["count"])
  if n < 2:
    raise ValueError(f"Need at least 2 observations for a covariance, got {n:g}.")
  mean = np.asarray(sums["sum"], np.float64) / n
  outer = np.asarray(sums["outer"], np.float64)
  cov = (outer - n * np.outer(mean, mean)) / (n - 1)
  return mean, cov


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray,
                     cov2: np.ndarray) -> float:
  """Frechet distance between Gaussians N(mu1, cov1) and N(mu2, cov2).

  |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)). A nearly singular
  product gets a small ridge on both covariances first.
  """
  diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
  covmean = scipy.linalg.sqrtm(cov1 @ cov2)
  if not np.isfinite(covmean).all():
    ridge = np.eye(len(cov1)) * 1e-6
    covmean = scipy.linalg.sqrtm((cov1 + ridge) @ (cov2 + ridge))
  covmean = np.real(covmean)
  return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))

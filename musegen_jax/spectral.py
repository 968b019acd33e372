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


def frame(audio: Array, n_fft: int, hop: int) -> Array:
  """[..., length] -> [..., frames, n_fft]: windows of `n_fft` samples every
  `hop` samples (no padding).

  Where `hop` divides `n_fft` (every STFT here), the audio is cut into blocks
  of `hop` samples and each frame joins n_fft / hop consecutive ones: slices
  whose gradient is a sum of pads, where a gather's is a scatter-add, which
  made the generator's backward pass through its STFTs 4x slower on CPU
  (BUILD_NOTES.md, issue 25 fifth pass). The values are the same.
  """
  length = audio.shape[-1]
  if length < n_fft:
    raise ValueError(f"Audio of {length} samples is shorter than n_fft={n_fft}.")
  num_frames = 1 + (length - n_fft) // hop
  if n_fft % hop:
    index = np.arange(num_frames)[:, None] * hop + np.arange(n_fft)[None, :]
    return audio[..., index]
  per_frame = n_fft // hop
  num_blocks = num_frames + per_frame - 1
  blocks = audio[..., :num_blocks * hop].reshape(audio.shape[:-1] + (num_blocks, hop))
  return jnp.concatenate([blocks[..., j:j + num_frames, :]
                          for j in range(per_frame)], axis=-1)


def power_frames(audio: Array, n_fft: int, hop: int) -> Array:
  """|STFT|^2 of [batch, length] audio: [batch, frames, n_fft // 2 + 1].

  Frames of `n_fft` samples every `hop` samples (no padding), Hann window.
  """
  window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
  spec = jnp.fft.rfft(frame(audio, n_fft, hop).astype(jnp.float32) * window,
                      axis=-1)
  return jnp.real(spec) ** 2 + jnp.imag(spec) ** 2


def log_mel(audio: Array, sample_rate: int, *, n_fft: int = 1024, hop: int = 256,
            n_mels: int = 64, floor: float = 1e-5) -> Array:
  """Log-mel power spectrogram of [batch, length] audio: [batch, frames, n_mels].

  Frames of `n_fft` samples every `hop` samples (no padding), Hann window.
  """
  power = power_frames(audio, n_fft, hop)
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


def feature_sums_by_group(features: Array, groups: Array, num_groups: int
                          ) -> dict[str, Array]:
  """`feature_sums` of each group: {"sum": [groups, dim], "outer": [groups,
  dim, dim], "count": [groups]}.

  Args:
    features: [batch, ..., dim]; every index but the last is one observation.
    groups: [batch] group ids in [0, num_groups): an example's observations
      all count for its group.
  """
  x = features.reshape(features.shape[0], -1, features.shape[-1]).astype(jnp.float32)
  weights = jax.nn.one_hot(groups, num_groups, dtype=jnp.float32)  # [batch, groups]
  return {"sum": jnp.einsum("bg,bnd->gd", weights, x),
          "outer": jnp.einsum("bg,bnd,bne->gde", weights, x, x),
          "count": weights.sum(0) * x.shape[1]}


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


# --- pitch: what the Frechet distance of log-mel frames cannot see -----------
#
# Both measures read one power spectrum per clip (a Hann window over the whole
# clip, so about 1 Hz per bin at 16 kHz and 16,384 samples) through bands of
# +-10 cents around equal-tempered frequencies (A4 = 440 Hz), never narrower
# than the window's main lobe (+-1.5 bins). Bands a quarter tone wide (+-25
# cents) were too lenient: the smoke WaveGAN's stride artefacts, lines at
# multiples of 62.5 Hz that sit 22-24 cents sharp of B, scored 0.78 there
# against real chorales' 0.90 (0.12 against 0.82 with +-10 cents).

PITCH_MIN_LENGTH = 4096  # Shorter clips cannot resolve semitones below C3.
PITCH_LOWEST = 28  # E1, 41 Hz: candidate pitches of the salience ...
PITCH_HIGHEST = 96  # ... up to C7, 2,093 Hz.
PITCH_HARMONICS = 6  # Partials per candidate pitch.
PITCH_CANDIDATES = 8  # The strongest pitches whose partials count as tonal.
PITCH_CENTS = 10.0  # Half-width (cents) of the bands around each frequency.
PITCH_FMIN = 30.0  # Energy below this (Hz) is left out of both measures.
_SILENT_POWER = 1e-12  # Mean power per bin below this: a silent clip.


def _band_matrix(sample_rate: int, length: int, centres: np.ndarray) -> np.ndarray:
  """[bins, len(centres)] 0/1: the bins within each centre's band."""
  bins = np.fft.rfftfreq(length, 1.0 / sample_rate)
  half = np.maximum(centres * (2 ** (PITCH_CENTS / 1200) - 1),
                    1.5 * sample_rate / length)
  inside = np.abs(bins[:, None] - centres[None, :]) <= half[None, :]
  return (inside & (centres[None, :] < sample_rate / 2)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _pitch_matrices(sample_rate: int, length: int):
  """(partials [bins, pitches]: the bands of each candidate's partials,
  chroma [bins, 12]: each pitch class's fundamental bands, in-range [bins])."""
  pitches = np.arange(PITCH_LOWEST, PITCH_HIGHEST + 1)
  f0 = 440.0 * 2.0 ** ((pitches - 69) / 12.0)
  partials = sum(_band_matrix(sample_rate, length, h * f0)
                 for h in range(1, PITCH_HARMONICS + 1))
  every = np.arange(12, 128)
  bands = _band_matrix(sample_rate, length, 440.0 * 2.0 ** ((every - 69) / 12.0))
  chroma = np.stack([bands[:, every % 12 == c].sum(1) for c in range(12)], 1)
  in_range = np.fft.rfftfreq(length, 1.0 / sample_rate) >= PITCH_FMIN
  return (np.minimum(partials, 1.0), np.minimum(chroma, 1.0),
          in_range.astype(np.float32))


def check_pitch_length(length: int) -> None:
  """Refuses clips too short for the pitch measures, naming the minimum."""
  if length < PITCH_MIN_LENGTH:
    raise ValueError(f"Clips of {length} samples are too short for the pitch "
                     f"measures; they need at least {PITCH_MIN_LENGTH}.")


def pitch_features(audio: Array, sample_rate: int) -> dict[str, Array]:
  """Per-clip pitch salience and sorted chroma profile of [batch, length] audio.

  - "salience" [batch]: the share of the clip's energy (above 30 Hz) that lies
    within 10 cents of the first 6 partials of its 8 strongest equal-tempered
    pitches (each pitch scored by the energy of its partials). Rendered
    chorales score about 0.82, white noise 0.22; a pure tone scores 1, which
    is why the chroma profile is measured beside it.
  - "profile" [batch, 12]: the energy within 10 cents of each pitch
    class, as shares of the energy of all 12, sorted from the strongest down
    (so independent of key). A single tone is [1, 0, ...], noise is flat,
    chorales lie between.

  A silent clip (mean power per bin below 1e-12) scores salience 0 and a flat
  profile. Non-finite audio has to be replaced before (`finite_clips`).
  """
  check_pitch_length(audio.shape[-1])
  length = audio.shape[-1]
  partials, chroma, in_range = _pitch_matrices(sample_rate, length)
  window = np.hanning(length + 1)[:-1].astype(np.float32)
  power = jnp.abs(jnp.fft.rfft(audio.astype(jnp.float32) * window, axis=-1)) ** 2
  power = power * in_range
  total = jnp.sum(power, -1)
  silent = total < _SILENT_POWER * power.shape[-1]
  strength = power @ partials  # [batch, pitches]
  _, top = jax.lax.top_k(strength, PITCH_CANDIDATES)
  chosen = jnp.sum(jax.nn.one_hot(top, partials.shape[1]), 1)  # [batch, pitches]
  covered = jnp.minimum(chosen @ partials.T, 1.0)  # [batch, bins]
  salience = jnp.sum(power * covered, -1) / jnp.where(silent, 1.0, total)
  classes = power @ chroma
  classes = classes / jnp.maximum(jnp.sum(classes, -1, keepdims=True), 1e-30)
  profile = -jnp.sort(-classes, axis=-1)
  profile = jnp.where(silent[:, None], 1.0 / 12, profile)
  return {"salience": jnp.where(silent, 0.0, salience), "profile": profile}


def pitch_sums(audio: Array, sample_rate: int) -> dict[str, Array]:
  """Sums over clips of `pitch_features`, to add up across batches and devices."""
  features = pitch_features(audio, sample_rate)
  return {"salience": jnp.sum(features["salience"]),
          "profile": jnp.sum(features["profile"], 0),
          "clips": jnp.asarray(audio.shape[0], jnp.float32)}


def pitch_summary(sums) -> tuple[float, np.ndarray]:
  """(mean salience, mean sorted chroma profile [12]) from `pitch_sums` totals."""
  n = float(sums["clips"])
  return float(sums["salience"]) / n, np.asarray(sums["profile"], np.float64) / n


def chroma_distance(profile1: np.ndarray, profile2: np.ndarray) -> float:
  """L1 distance between two mean sorted chroma profiles (0 to 2)."""
  return float(np.sum(np.abs(np.asarray(profile1) - np.asarray(profile2))))


def finite_clips(audio: Array) -> tuple[Array, Array]:
  """(audio with every clip that holds a NaN or Inf silenced, their count).

  A generator that diverged yields silent clips, which every measure here
  scores as far from music, instead of NaN statistics.
  """
  bad = ~jnp.all(jnp.isfinite(audio), axis=tuple(range(1, audio.ndim)))
  shape = (-1,) + (1,) * (audio.ndim - 1)
  return (jnp.where(bad.reshape(shape), 0.0, audio),
          jnp.sum(bad).astype(jnp.float32))

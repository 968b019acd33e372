"""Audio GAN parts beside WaveGAN's: an oscillator-bank generator and a
multi-resolution STFT discriminator.

`OscillatorGenerator` works at a frame rate (one frame every `hop` samples)
and upsamples by synthesis, as DDSP (Engel et al., 2020) and the
neural-source-filter vocoders do: convolutions turn the latent into
[frames, channels] features (upsampled by repetition and convolution), a
dense layer per frame into the log-amplitudes of a fixed bank of sinusoids spaced `per_octave` to the octave (24: quarter tones
from C1, A4 = 440 Hz, below 0.95 Nyquist), and the audio is their sum with
the amplitudes interpolated linearly between frames. Phases run continuously
from fixed random offsets, so every tone is sustained and free of clicks; the
network only chooses which partials sound, and how loud, in each frame.

`STFTDiscriminator` scores log-power spectrograms at several resolutions
(the multi-resolution discriminators of UnivNet and HiFi-GAN's successors):
per resolution, 1-D convolutions over frames with the frequency bins as
channels, LeakyReLU(0.2), and a dense layer on the flattened features (or,
with `patches`, on each position: one score per tenth of a second or so, as
PatchGAN and MelGAN's discriminators give). With `pack` > 1 it scores packs
of clips side by side (PacGAN, Lin et al., 2018), so that a generator that
repeats itself is seen. Long windows resolve low pitches to a fraction of a
semitone, short ones onsets. Hidden features are sown as "intermediates"
for feature matching.

`Discriminators` runs several and returns one logit per discriminator.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musegen_jax import spectral
from musegen_jax.models import layers
from musegen_jax.models import wavegan

Array = jax.Array

LOWEST_MIDI = 24
LOWEST_HZ = 440.0 * 2.0 ** ((LOWEST_MIDI - 69) / 12.0)  # C1, 32.7 Hz.
LOG_AMPLITUDE_SPREAD = 3.0
LOG_AMPLITUDE_GAIN = 3.0


HIGHEST_MIDI = 96
HARMONIC_HIGHEST_HZ = 440.0 * 2.0 ** ((HIGHEST_MIDI - 69) / 12.0)  # C7, 2,093 Hz.


def bank_frequencies(sample_rate: int, per_octave: int,
                     harmonics: int = 1) -> np.ndarray:
  """The oscillators' frequencies (Hz), `per_octave` to the octave from C1
  (equal temperament, A4 = 440 Hz).

  harmonics == 1: one oscillator per step up to 0.95 times the Nyquist
  frequency, [K]. harmonics > 1: fundamentals up to C7, each with its first
  `harmonics` partials at exact multiples, [pitches * harmonics] (pitch
  major); partials at or above 0.95 Nyquist are kept but never sound
  (`_synthesis_constants`).
  """
  top_hz = 0.95 * sample_rate / 2 if harmonics == 1 else HARMONIC_HIGHEST_HZ
  top = int(np.floor(per_octave * np.log2(top_hz / LOWEST_HZ) + 1e-9))
  f0 = LOWEST_HZ * 2.0 ** (np.arange(top + 1) / per_octave)
  return (f0[:, None] * np.arange(1, harmonics + 1)[None, :]).reshape(-1)


@functools.lru_cache(maxsize=8)
def _synthesis_constants(sample_rate: int, per_octave: int, harmonics: int,
                         frames: int, hop: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(sin of the start phases [frames, K], cos [frames, K], basis [4K, hop]).

  Frame j's samples j * hop + t, t < hop, are
    sum_k (a_jk (1 - u) + a_(j+1)k u) sin(theta_jk + w_k t),   u = t / hop,
  with theta_jk the phase of oscillator k at the frame's first sample; with
  sin(theta + w t) = sin theta cos wt + cos theta sin wt that is one GEMM of
  [a sin theta, a cos theta, a' sin theta, a' cos theta] with the basis
  [(1 - u) cos wt; (1 - u) sin wt; u cos wt; u sin wt]. Oscillators at or
  above 0.95 Nyquist have zero basis rows (no aliasing).
  """
  freqs = bank_frequencies(sample_rate, per_octave, harmonics)
  offsets = np.random.default_rng(0).uniform(0, 2 * np.pi, len(freqs))
  omega = 2 * np.pi * freqs / sample_rate
  starts = np.arange(frames)[:, None] * hop
  theta = np.mod(starts * omega[None, :] + offsets[None, :], 2 * np.pi)
  t = np.arange(hop)[None, :]
  u = t / hop
  wt = omega[:, None] * t
  audible = (freqs < 0.95 * sample_rate / 2)[:, None]
  basis = np.concatenate([(1 - u) * np.cos(wt), (1 - u) * np.sin(wt),
                          u * np.cos(wt), u * np.sin(wt)]) * np.tile(audible, (4, 1))
  return (np.sin(theta).astype(np.float32), np.cos(theta).astype(np.float32),
          basis.astype(np.float32))


def oscillator_bank(amplitudes: Array, sample_rate: int, per_octave: int,
                    hop: int, harmonics: int = 1) -> Array:
  """Audio [batch, frames * hop] of the bank at amplitudes [batch, frames, K].

  Amplitudes are interpolated linearly from each frame's first sample to the
  next frame's (the last frame holds its own).
  """
  batch, frames, k = amplitudes.shape
  sin_t, cos_t, basis = _synthesis_constants(sample_rate, per_octave, harmonics,
                                             frames, hop)
  if k != sin_t.shape[1]:
    raise ValueError(f"{k} amplitudes per frame for a bank of {sin_t.shape[1]} "
                     "oscillators")
  nxt = jnp.concatenate([amplitudes[:, 1:], amplitudes[:, -1:]], axis=1)
  coeffs = jnp.concatenate([amplitudes * sin_t, amplitudes * cos_t,
                            nxt * sin_t, nxt * cos_t], axis=-1)
  y = coeffs.reshape(batch * frames, 4 * k) @ basis.astype(coeffs.dtype)
  return y.reshape(batch, frames * hop)


def peak_normalize(audio: Array, eps: float = 1e-6) -> Array:
  """Each example scaled to a peak of 1 (what `data.normalize` does to real
  clips), along every axis but the first."""
  peak = jnp.max(jnp.abs(audio), axis=tuple(range(1, audio.ndim)), keepdims=True)
  return audio / (peak + eps)


class OscillatorGenerator(nn.Module):
  """Latent vector -> waveform through a bank of sinusoids (module docstring).

  Dense to [16 frames, 4 * dim], then up to slice_len / hop frames by
  repeating each frame twice and convolving (halving the channels down to
  dim), layer norm and ReLU before each, then a dense layer per frame to the
  bank's log-amplitudes. With harmonics > 1 the bank holds each pitch's
  first `harmonics` partials, and two dense layers give each frame's pitch
  and partial log-amplitudes, which add (DDSP's harmonic synthesizer, its
  pitches on the bank's grid).
  With `voices` > 0 (and harmonics > 1), each frame instead holds that many
  voices, as a chorale's parts: each a softmax over the bank's pitches within
  `voice_range` (MIDI; with `hard_voices` only its most likely pitch sounds,
  straight-through) times a loudness in (0, 1), and every pitch sounds its
  partials at log-amplitudes given per frame (`frame_partials`) or learned
  once (one timbre). With `pitch_frames` > 1 a voice chooses its pitch once
  per that many frames (from their features' mean), as notes last, while its
  loudness still changes every frame. The per-pitch amplitudes are sown as
  "intermediates"/"pitch_amplitudes".
  The loudest partial of a clip has amplitude 1; with `normalize` the clip
  is then scaled to a peak of 1, else bounded by tanh.
  """

  slice_len: int = 16384
  latent_dim: int = 100
  dim: int = 64
  kernel_size: int = 5
  hop: int = 128
  per_octave: int = 24
  harmonics: int = 1
  voices: int = 0
  voice_range: tuple[int, int] = (24, 96)
  frame_partials: bool = True
  hard_voices: bool = True
  pitch_frames: int = 1
  sample_rate: int = 16000
  normalize: bool = True
  conv_impl: str = "auto"
  dtype: Any = jnp.float32
  # > 0: class-conditional, z plus a learned embedding of the clip's style.
  num_styles: int = 0

  @nn.compact
  def __call__(self, z: Array, train: bool = False, style: Array | None = None) -> Array:
    """[batch, latent_dim] -> [batch, slice_len, 1] float32 in [-1, 1]; a
    conditioned generator's `style`: [batch] ids."""
    del train  # No batch statistics or dropout.
    z = layers.styled_latent(self.num_styles, z, style)
    frames = self.slice_len // self.hop
    ups = int(np.log2(frames // 16))
    if frames * self.hop != self.slice_len or 16 << ups != frames:
      raise ValueError(f"slice_len={self.slice_len} / hop={self.hop} must be 16 "
                       "times a power of two frames")
    k = len(bank_frequencies(self.sample_rate, self.per_octave, self.harmonics))
    x = nn.Dense(16 * 4 * self.dim, dtype=self.dtype,
                 kernel_init=wavegan._logical(nn.initializers.glorot_uniform(),
                                              "latent", "mlp"),
                 bias_init=wavegan._logical(nn.initializers.zeros_init(), "mlp"),
                 name="z_project")(z.astype(self.dtype))
    x = x.reshape(z.shape[0], 16, 4 * self.dim)
    for i in range(ups):
      x = nn.relu(nn.LayerNorm(dtype=self.dtype, name=f"norm_{i}")(x))
      # Repeat, then convolve: transposed convolutions whose kernel is not
      # a multiple of the stride beat at the frame rate (Odena et al., 2016).
      x = wavegan.Conv1D(max(4 * self.dim >> (i + 1), self.dim), self.kernel_size,
                         1, conv_impl=self.conv_impl, dtype=self.dtype,
                         name=f"upconv_{i}")(jnp.repeat(x, 2, axis=1))
    x = nn.relu(nn.LayerNorm(dtype=self.dtype, name=f"norm_{ups}")(x))
    if self.voices:  # a[p, h] = sum_v loudness_v softmax_v(p) * partial h's.
      pitches = k // self.harmonics
      g = self.pitch_frames
      if frames % g:
        raise ValueError(f"pitch_frames={g} must divide the {frames} frames")
      pooled = x if g == 1 else jnp.mean(
          x.reshape((x.shape[0], frames // g, g) + x.shape[2:]), axis=2)
      logits = self._log_amplitudes(pooled, self.voices * pitches, "voice_pitches")
      if g > 1:  # Each pitch choice holds for its g frames.
        logits = jnp.repeat(logits, g, axis=1)
      midi = LOWEST_MIDI + np.arange(pitches) * 12.0 / self.per_octave
      allowed = (midi >= self.voice_range[0]) & (midi <= self.voice_range[1])
      logits = logits.reshape(logits.shape[:2] + (self.voices, pitches))
      soft = jax.nn.softmax(jnp.where(allowed, logits, -jnp.inf), axis=-1)
      weights = soft
      if self.hard_voices:  # Straight-through: each voice sounds its most
        # likely pitch alone; gradients flow as through the softmax.
        hard = jax.nn.one_hot(jnp.argmax(soft, axis=-1), pitches, dtype=soft.dtype)
        weights = soft + jax.lax.stop_gradient(hard - soft)
      loudness = jax.nn.sigmoid(self._log_amplitudes(x, self.voices, "voice_loudness"))
      pitch_amp = jnp.einsum("bfv,bfvp->bfp", loudness, weights)
      self.sow("intermediates", "pitch_amplitudes", pitch_amp)
      if self.frame_partials:
        partials = self._log_amplitudes(x, self.harmonics, "partials")
      else:  # One timbre: the partials' log-amplitudes are parameters.
        partials = LOG_AMPLITUDE_GAIN * self.param(
            "partials", wavegan._logical(nn.initializers.zeros_init(), None),
            (self.harmonics,), jnp.float32)
      log_amp = (jnp.log(pitch_amp + 1e-12)[..., :, None]
                 + partials[..., None, :]).reshape(pitch_amp.shape[:2] + (k,))
    elif self.harmonics == 1:
      log_amp = self._log_amplitudes(x, k, "amplitudes")
    else:  # log a[p, h] = pitch p's + partial h's, each frame.
      pitches = self._log_amplitudes(x, k // self.harmonics, "pitches")
      partials = self._log_amplitudes(x, self.harmonics, "partials")
      log_amp = (pitches[..., :, None] + partials[..., None, :]).reshape(
          pitches.shape[:2] + (k,))
    log_amp = jnp.minimum(log_amp, 30.0)
    audio = oscillator_bank(jnp.exp(log_amp - jax.lax.stop_gradient(
        jnp.max(log_amp, axis=(1, 2), keepdims=True))),
                            self.sample_rate, self.per_octave, self.hop,
                            self.harmonics)
    audio = peak_normalize(audio) if self.normalize else jnp.tanh(audio)
    return audio[..., None]

  def _log_amplitudes(self, x: Array, n: int, name: str) -> Array:
    """A dense layer per frame to n log-amplitudes, float32.

    Spread at initialisation (standard deviation about LOG_AMPLITUDE_SPREAD
    across the outputs), so that a few partials dominate each frame from the
    first step, as in music, rather than a flat comb that sounds like noise.
    The output is scaled up by LOG_AMPLITUDE_GAIN (the initial weights down
    by as much): Adam moves a parameter by about the learning rate per step,
    and silencing a partial takes ~10 nats, which the unscaled layer needs
    thousands of steps to reach.
    """
    y = nn.Dense(n, dtype=self.dtype,
                 kernel_init=wavegan._logical(
                     nn.initializers.normal(
                         LOG_AMPLITUDE_SPREAD / LOG_AMPLITUDE_GAIN
                         / np.sqrt(x.shape[-1] / 2)), "mlp", None),
                 bias_init=wavegan._logical(nn.initializers.zeros_init(), None),
                 name=name)(x)
    return LOG_AMPLITUDE_GAIN * y.astype(jnp.float32)


def log_power_frames(audio: Array, n_fft: int, hop: int,
                     floor: float = 1e-5) -> Array:
  """log(|STFT|^2 + floor) of [batch, length] audio (`spectral.power_frames`)."""
  return jnp.log(spectral.power_frames(audio, n_fft, hop) + floor)


def append_minibatch_std(h: Array) -> Array:
  """[batch, length, channels] -> [batch, length, channels + 1]: the standard
  deviation over the batch of every feature, averaged, as one more channel.

  A generator that gives every latent the same clip (mode collapse) shows
  a spread unlike real batches' (Karras et al., 2018, progressive GANs).
  """
  std = jnp.sqrt(jnp.var(h.astype(jnp.float32), axis=0) + 1e-8)
  extra = jnp.broadcast_to(jnp.mean(std).astype(h.dtype), h.shape[:-1] + (1,))
  return jnp.concatenate([h, extra], axis=-1)


class STFTDiscriminator(nn.Module):
  """Waveform -> one logit per example from log-power spectrograms.

  Per window size n in `sizes` (hop n / 4): convolutions over frames (kernel
  `kernel_size`, strides 1, 2, 2, `dim` channels, LeakyReLU 0.2) and a dense
  layer on the flattened features: one logit per size, each scored as its
  own discriminator. With `minibatch_std`, the features' standard deviation
  over the batch joins them as one more channel first (`append_minibatch_std`).
  """

  sizes: Sequence[int] = (256, 1024, 4096)
  dim: int = 64
  minibatch_std: bool = False
  patches: bool = False
  pack: int = 1
  kernel_size: int = 5
  conv_impl: str = "auto"
  dtype: Any = jnp.float32
  # > 0: a projection discriminator (`layers.style_projection` of each
  # size's last features, pooled over frames, added to its logits).
  num_styles: int = 0

  @nn.compact
  def __call__(self, x: Array, train: bool = False, style: Array | None = None) -> Array:
    """[batch, length, 1] -> [batch, len(sizes)] float32 logits ([batch,
    positions summed over sizes] with `patches`; batch / pack rows); a
    conditioned discriminator's `style`: [batch] ids (pack 1)."""
    if x.shape[0] % self.pack:
      raise ValueError(f"a batch of {x.shape[0]} clips does not divide into "
                       f"packs of {self.pack}")
    del train
    audio = x[..., 0]
    logits = []
    for n in self.sizes:
      if n > audio.shape[-1]:
        raise ValueError(f"STFT size {n} is longer than the clips "
                         f"({audio.shape[-1]} samples)")
      h = log_power_frames(audio, n, n // 4).astype(self.dtype)
      if self.pack > 1:  # [batch / pack, frames, pack * bins].
        b, f, k = h.shape
        h = h.reshape(b // self.pack, self.pack, f, k).transpose(0, 2, 1, 3)
        h = h.reshape(b // self.pack, f, self.pack * k)
      for i, stride in enumerate((1, 2, 2)):
        h = wavegan.Conv1D(self.dim, self.kernel_size, stride,
                           conv_impl=self.conv_impl, dtype=self.dtype,
                           name=f"stft{n}_conv_{i}")(h)
        h = nn.leaky_relu(h, 0.2)
        # For feature matching (tasks/gan.py): read with mutable=["intermediates"].
        self.sow("intermediates", f"stft{n}_features_{i}", h)
      if self.minibatch_std:
        h = append_minibatch_std(h)
      features = h
      if not self.patches:
        h = h.reshape(h.shape[0], -1)
      out = nn.Dense(1, dtype=self.dtype,
                     kernel_init=wavegan._logical(
                         nn.initializers.glorot_uniform(), "mlp", None),
                     bias_init=wavegan._logical(nn.initializers.zeros_init(), None),
                     name=f"stft{n}_output")(h)
      out = out.reshape(out.shape[0], -1).astype(jnp.float32)
      if self.num_styles:
        out += layers.style_projection(self.num_styles, features, style,
                                       f"stft{n}_style_projection")
      logits.append(out)
    return jnp.concatenate(logits, axis=-1)


class Discriminators(nn.Module):
  """Several discriminators on the same clips: [batch, columns] logits.

  Each member maps (x, train) to [batch] or [batch, n] logits; the losses
  treat every column as one discriminator's scores.
  """

  members: Sequence[nn.Module]

  def __call__(self, x: Array, train: bool = False, style: Array | None = None) -> Array:
    outs = [m(x, train=train, style=style) for m in self.members]
    return jnp.concatenate([o.reshape(o.shape[0], -1) for o in outs], axis=-1)

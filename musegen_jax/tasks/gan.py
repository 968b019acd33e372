"""Audio GAN: WaveGAN (WGAN-GP) by default, non-saturating BCE or hinge.

Batches are {"audio": [batch, critic_steps, slice_len, 1] float32 in [-1, 1]}:
every critic update of a step sees its own real batch. One compiled step runs
all critic updates (a `lax.scan`) and then one generator update, and keeps an
exponential moving average (EMA) of the generator's parameters, which is what
evaluation, samples and export use.

The networks are config options (`build_generator`, `build_discriminator`):
WaveGAN's generator or the oscillator-bank one (`models/audio_gan.py`), and
WaveGAN's discriminator and/or STFT discriminators, each column of their
logits its own loss; R1 (`gan.r1_weight`), two learning rates
(`gan.d_learning_rate`) and an EMA warm-up (`gan.ema_warmup`) beside.

Evaluation (`summarize`) compares generated clips with held-out real clips by
the Frechet distance of their log-mel statistics, next to the same distance
between two real splits at the same clip count (`frechet_ratio`), and by
pitch salience and chroma profiles (`spectral.py`). The distance picks the
best checkpoint (lower is better).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from ml_collections import config_dict

from musegen_jax import errors
from musegen_jax import models
from musegen_jax import parallel
from musegen_jax import spectral
from musegen_jax.data import audio
from musegen_jax.data import labels
from musegen_jax.kernels import conv
from musegen_jax.models import audio_gan
from musegen_jax.models import wavegan
from musegen_jax.tasks import checks
from musegen_jax.tasks import samples
from musegen_jax.tasks import state as state_lib
from musegen_jax.tasks import steps
from musegen_jax.tasks.samples import slerp

Array = jax.Array

LOSSES = ("wgan-gp", "bce", "hinge")
GENERATORS = ("waveform", "oscillators")
DISCRIMINATORS = ("waveform", "stft")
# Keys added after bundles were first exported, with the values that
# reproduce those bundles' models (tasks.fill_defaults adds missing ones).
CONFIG_DEFAULTS = {
    "model.generator": "waveform", "model.discriminators": "waveform",
    "model.d_dim": 0, "model.stft_sizes": (256, 1024, 4096),
    "model.stft_dim": 64, "model.frame_kernel_size": 5, "model.frame_hop": 128,
    "model.oscillators_per_octave": 24, "model.normalize_output": True,
    "model.minibatch_std": False, "model.harmonics": 1, "model.voices": 0,
    "model.voice_range": (24, 96), "model.frame_partials": True,
    "model.hard_voices": True, "model.voice_pitch_frames": 1,
    "model.stft_patches": False, "model.stft_pack": 1,
    "gan.r1_weight": 0.0, "gan.d_learning_rate": 0.0, "gan.ema_warmup": False,
    "gan.mode_seeking_weight": 0.0, "gan.feature_matching_weight": 0.0,
    "gan.coverage_weight": 0.0, "gan.moment_weight": 0.0, "gan.lr_end_factor": 1.0,
    "gan.moment_distance": "frobenius", "condition.enabled": False, "styles": ()}
# What moment matching compares the covariances by (`moment_matching_loss`).
MOMENT_DISTANCES = ("frobenius", "frechet")
SLICE_LENGTHS = (16384, 32768, 65536)
# Log-mel features of the Frechet distance.
FRECHET_N_FFT = 1024
FRECHET_HOP = 256
FRECHET_N_MELS = 64
# The running average of real audio's log-mel statistics that moment matching
# compares with: min(MOMENTS_DECAY, t / (t + 1)) at step t, the plain mean of
# all batches so far until that reaches the cap.
MOMENTS_DECAY = 0.999
# `evaluate` compares at least this many clips unless told otherwise: the
# real-vs-real distance of the chorales falls from 561 at 16 clips to 28 at 512.
MIN_EVALUATE_CLIPS = 512


def evaluate_num_batches(config: config_dict.ConfigDict) -> int:
  """`num_eval_batches`, raised to reach MIN_EVALUATE_CLIPS (-1 stays: all)."""
  n = config.num_eval_batches
  return n if n < 0 else max(n, -(-MIN_EVALUATE_CLIPS // config.batch_size))


def configure_from_data(config: config_dict.ConfigDict, data_dir: str) -> None:
  """A class-conditional GAN's styles: the labelled dataset's."""
  if config.condition.enabled:
    labels.fill_styles(config, data_dir)


def check_config(config: config_dict.ConfigDict) -> None:
  """Rejects out-of-range values of the GAN's keys."""
  checks.check_model_name(config, ("wavegan",))
  checks.check_optimizer_ranges(config)
  positive = {"gan.critic_steps": config.gan.critic_steps,
              "model.dim": config.model.dim,
              "model.latent_dim": config.model.latent_dim,
              "model.kernel_size": config.model.kernel_size,
              "data.audio.sample_rate": config.data.audio.sample_rate,
              "sample.num_samples": config.sample.num_samples}
  non_negative = {"gan.gp_weight": config.gan.gp_weight,
                  "model.phase_shuffle": config.model.phase_shuffle,
                  "data.silence_threshold": config.data.silence_threshold}
  checks.check_ranges(positive=positive, non_negative=non_negative,
                      fractions={"gan.ema_decay": config.gan.ema_decay})
  if config.gan.loss not in LOSSES:
    raise ValueError(f"config.gan.loss={config.gan.loss!r}; allowed: {list(LOSSES)}")
  if config.data.slice_len not in SLICE_LENGTHS:
    raise ValueError(f"config.data.slice_len={config.data.slice_len}; allowed: "
                     f"{list(SLICE_LENGTHS)}")
  if config.model.use_batchnorm and (config.grad_accum_steps > 1
                                     or config.parallelism != "jit"):
    raise ValueError(
        "config.model.use_batchnorm=True needs the whole batch in one program: "
        f"got grad_accum_steps={config.grad_accum_steps}, parallelism="
        f"{config.parallelism!r} (batch statistics would be per micro-batch "
        "or per device). Use grad_accum_steps=1 and parallelism='jit'.")
  _check_architecture(config)
  if config.condition.enabled and config.model.stft_pack > 1:
    raise ValueError(f"config.model.stft_pack={config.model.stft_pack}: a "
                     "class-conditional GAN (config.condition.enabled) scores each "
                     "clip with its own style; allowed: 1.")
  conv.resolve_conv_impl(config.model.conv_impl)
  models.get_dtype(config.model.dtype)


def _check_architecture(config: config_dict.ConfigDict) -> None:
  """Generator, discriminators and their sizes."""
  m = config.model
  if m.generator not in GENERATORS:
    raise ValueError(f"config.model.generator={m.generator!r}; allowed: "
                     f"{list(GENERATORS)}")
  names = discriminator_names(config)
  if (not names or len(set(names)) != len(names)
      or any(n not in DISCRIMINATORS for n in names)):
    raise ValueError(f"config.model.discriminators={m.discriminators!r}; allowed: "
                     f"a comma-separated list of {list(DISCRIMINATORS)}, each "
                     "at most once")
  checks.check_ranges(
      positive={"model.stft_dim": m.stft_dim,
                "model.frame_kernel_size": m.frame_kernel_size,
                "model.oscillators_per_octave": m.oscillators_per_octave,
                "model.harmonics": m.harmonics},
      non_negative={"gan.r1_weight": config.gan.r1_weight,
                    "gan.d_learning_rate": config.gan.d_learning_rate,
                    "gan.mode_seeking_weight": config.gan.mode_seeking_weight,
                    "gan.feature_matching_weight":
                        config.gan.feature_matching_weight,
                    "gan.coverage_weight": config.gan.coverage_weight,
                    "gan.moment_weight": config.gan.moment_weight,
                    "model.d_dim": m.d_dim})
  if config.gan.moment_distance not in MOMENT_DISTANCES:
    raise ValueError(f"config.gan.moment_distance={config.gan.moment_distance!r}; "
                     f"allowed: {list(MOMENT_DISTANCES)}")
  if not 0.0 < config.gan.lr_end_factor <= 1.0:
    raise ValueError(f"config.gan.lr_end_factor={config.gan.lr_end_factor}; allowed: "
                     "(0, 1] (1: constant learning rates)")
  slice_len = config.data.slice_len
  if "stft" in names:
    sizes = list(m.stft_sizes)
    bad = [n for n in sizes if not (isinstance(n, int) and 16 <= n <= slice_len
                                    and n & (n - 1) == 0)]
    if not sizes or bad:
      raise ValueError(f"config.model.stft_sizes={tuple(sizes)}; allowed: one or "
                       f"more powers of two from 16 to data.slice_len={slice_len}")
  if m.voices:
    voice_range = tuple(m.voice_range)
    if m.generator != "oscillators" or m.harmonics < 2 or m.voices < 0:
      raise ValueError(f"config.model.voices={m.voices}; allowed: 0, or a "
                       "positive count with model.generator='oscillators' and "
                       f"model.harmonics >= 2 (got {m.generator!r}, "
                       f"{m.harmonics})")
    if not (len(voice_range) == 2 and all(isinstance(p, int) for p in voice_range)
            and audio_gan.LOWEST_MIDI <= voice_range[0] <= voice_range[1]
            <= audio_gan.HIGHEST_MIDI):
      raise ValueError(f"config.model.voice_range={voice_range}; allowed: "
                       f"(low, high) MIDI pitches with {audio_gan.LOWEST_MIDI} <= "
                       f"low <= high <= {audio_gan.HIGHEST_MIDI}")
  pack = m.stft_pack
  micro = config.batch_size // max(1, config.grad_accum_steps)
  if not (isinstance(pack, int) and pack >= 1 and micro % pack == 0):
    raise ValueError(f"config.model.stft_pack={pack!r}; allowed: a positive "
                     f"integer that divides each update's batch (batch_size "
                     f"{config.batch_size} / grad_accum_steps "
                     f"{config.grad_accum_steps} = {micro})")
  if pack > 1 and "waveform" in names:
    raise ValueError(f"config.model.stft_pack={pack} scores packs of clips, "
                     "which WaveGAN's discriminator does not; use "
                     "model.discriminators='stft' or model.stft_pack=1 (got "
                     f"{m.discriminators!r})")
  if config.gan.feature_matching_weight > 0 and "stft" not in names:
    raise ValueError(f"config.gan.feature_matching_weight="
                     f"{config.gan.feature_matching_weight} reads the STFT "
                     "discriminators' features; add 'stft' to "
                     f"model.discriminators (got {m.discriminators!r})")
  if m.generator == "oscillators":
    hop = m.frame_hop
    frames = slice_len // hop if isinstance(hop, int) and hop > 0 else 0
    if frames * hop != slice_len or frames < 16 or frames & (frames - 1):
      raise ValueError(f"config.model.frame_hop={hop!r}; allowed: a power of two "
                       f"that leaves data.slice_len / frame_hop = 16 or more "
                       f"frames (slice_len {slice_len}), e.g. 128")
    g = m.voice_pitch_frames
    if not (isinstance(g, int) and 1 <= g <= frames and g & (g - 1) == 0):
      raise ValueError(f"config.model.voice_pitch_frames={g!r}; allowed: a power "
                       f"of two from 1 to the {frames} frames of a clip "
                       f"(data.slice_len {slice_len} / model.frame_hop {hop})")


def build_generator(config: config_dict.ConfigDict):
  """The generator `config.model.generator` names."""
  m = config.model
  dtype = models.get_dtype(m.dtype)
  num_styles = num_styles_of(config)
  if m.generator == "oscillators":
    return audio_gan.OscillatorGenerator(
        slice_len=int(config.data.slice_len), latent_dim=m.latent_dim, dim=m.dim,
        kernel_size=m.frame_kernel_size, hop=m.frame_hop,
        per_octave=m.oscillators_per_octave, harmonics=m.harmonics,
        voices=m.voices, voice_range=tuple(m.voice_range),
        frame_partials=m.frame_partials, hard_voices=m.hard_voices,
        pitch_frames=m.voice_pitch_frames,
        sample_rate=int(config.data.audio.sample_rate),
        normalize=m.normalize_output, conv_impl=m.conv_impl, dtype=dtype,
        num_styles=num_styles)
  return wavegan.WaveGANGenerator(
      latent_dim=m.latent_dim, slice_len=int(config.data.slice_len), dim=m.dim,
      kernel_size=m.kernel_size, use_batchnorm=m.use_batchnorm,
      conv_impl=m.conv_impl, dtype=dtype, num_styles=num_styles)


def num_styles_of(config: config_dict.ConfigDict) -> int:
  """A class-conditional GAN's number of styles (0: unconditional)."""
  return len(config.styles) if config.condition.enabled else 0


def build_discriminator(config: config_dict.ConfigDict):
  """The discriminators `config.model.discriminators` names: WaveGAN's alone
  gives [batch] logits, several (or the STFT one) [batch, columns]."""
  m = config.model
  dtype = models.get_dtype(m.dtype)
  num_styles = num_styles_of(config)
  members = []
  for name in discriminator_names(config):
    if name == "waveform":
      members.append(wavegan.WaveGANDiscriminator(
          slice_len=int(config.data.slice_len), dim=m.d_dim or m.dim,
          kernel_size=m.kernel_size, phase_shuffle=m.phase_shuffle,
          use_batchnorm=m.use_batchnorm, conv_impl=m.conv_impl, dtype=dtype,
          num_styles=num_styles))
    else:
      members.append(audio_gan.STFTDiscriminator(
          sizes=tuple(m.stft_sizes), dim=m.stft_dim, kernel_size=m.frame_kernel_size,
          minibatch_std=m.minibatch_std, patches=m.stft_patches,
          pack=m.stft_pack, conv_impl=m.conv_impl, dtype=dtype,
          num_styles=num_styles))
  if len(members) == 1 and isinstance(members[0], wavegan.WaveGANDiscriminator):
    return members[0]  # The paper's model, with its own parameter names.
  return audio_gan.Discriminators(members=members)


def discriminator_names(config: config_dict.ConfigDict) -> list[str]:
  return [n.strip() for n in config.model.discriminators.split(",") if n.strip()]


def mode_seeking_loss(fake: Array, z: Array, n_fft: int = 1024) -> Array:
  """Mode seeking (Mao et al., 2019, MSGAN): 1 / (ratio + 1e-5), where ratio
  is the mean absolute difference of two halves of the batch's clips, as
  log-power spectrograms (`n_fft` window, hop n_fft / 4, each clip's mean
  log power subtracted), over that of their latents. A generator that gives
  every latent the same clip pays ~1e5; one whose clips differ as real ones
  do (several nats) pays a few tenths.

  Args:
    fake: [batch, slice_len, 1] generated clips (batch of 2 or more).
    z: [batch, latent_dim] their latents.
  """
  half = fake.shape[0] // 2
  if half < 1:
    raise ValueError("mode seeking needs a batch of 2 or more clips per update")
  feats = audio_gan.log_power_frames(fake[..., 0].astype(jnp.float32), n_fft,
                                     n_fft // 4)
  # Level left out: a clip louder or softer throughout is not another mode.
  feats = feats - jnp.mean(feats, axis=(1, 2), keepdims=True)
  d_x = jnp.mean(jnp.abs(feats[:half] - feats[half:2 * half]))
  d_z = jnp.mean(jnp.abs(z[:half] - z[half:2 * half]))
  return 1.0 / (d_x / d_z + 1e-5)


def feature_matching_loss(real_features: list[Array],
                          fake_features: list[Array]) -> Array:
  """Feature matching (Salimans et al., 2016): the mean over the
  discriminator's hidden layers of the mean absolute difference between the
  batch means of each channel, real against generated (every position of a
  layer one observation)."""
  def channel_means(h):
    return jnp.mean(h.reshape(-1, h.shape[-1]).astype(jnp.float32), axis=0)
  return jnp.mean(jnp.stack([
      jnp.mean(jnp.abs(channel_means(r) - channel_means(f)))
      for r, f in zip(real_features, fake_features)]))


def coverage_loss(real: Array, fake: Array, n_fft: int = 1024) -> Array:
  """The symmetric Chamfer distance between the real and the generated
  clips' spectrogram frames (log power, `n_fft` window, hop n_fft / 2): the
  mean over real frames of the squared distance (per bin) to the nearest
  generated frame, plus the same from generated to real. The first term is
  small only if every kind of real frame has a generated one near it (mode
  coverage, as implicit maximum likelihood estimation asks, Li and Malik,
  2018); the second only if every generated frame looks like a real one.

  Args:
    real, fake: [batch, slice_len, 1] clips; only `fake` gets gradients.
  """
  def frames(x):
    f = audio_gan.log_power_frames(x[..., 0].astype(jnp.float32), n_fft, n_fft // 2)
    return f.reshape(-1, f.shape[-1])
  r, f = jax.lax.stop_gradient(frames(real)), frames(fake)
  dist = (jnp.sum(r * r, -1)[:, None] + jnp.sum(f * f, -1)[None, :]
          - 2.0 * r @ f.T) / r.shape[-1]
  dist = jnp.maximum(dist, 0.0)
  return jnp.mean(jnp.min(dist, axis=1)) + jnp.mean(jnp.min(dist, axis=0))


def frechet_features(audio: Array, sample_rate: int) -> Array:
  """The log-mel frames the Frechet distance compares, of [batch, length]
  audio: [batch, frames, FRECHET_N_MELS]."""
  return spectral.log_mel(audio, sample_rate, n_fft=FRECHET_N_FFT,
                          hop=FRECHET_HOP, n_mels=FRECHET_N_MELS)


def mel_moments(clips: Array, sample_rate: int) -> dict[str, Array]:
  """The mean [64] and mean outer product [64, 64] of the Frechet distance's
  log-mel frames of [batch, slice_len, 1] clips."""
  sums = spectral.feature_sums(frechet_features(clips[..., 0], sample_rate))
  return {"mean": sums["sum"] / sums["count"], "outer": sums["outer"] / sums["count"]}


def moment_matching_loss(real: dict[str, Array], fake: Array,
                         sample_rate: int, distance: str = "frobenius") -> Array:
  """Mean and covariance feature matching (Mroueh et al., 2017, McGan) on
  log-mel frames between real audio's statistics and those of the generated
  clips' frames: |mu_r - mu_g|^2 plus, with `distance` "frobenius",
  ||C_r - C_g||_F, or with "frechet" the Frechet distance's own covariance
  term, tr(C_r + C_g - 2 (C_r^1/2 C_g C_r^1/2)^1/2) (`frechet_covariance_term`),
  so that the whole is the Frechet distance between the two Gaussians. It is
  of the Frechet distance's size: a few thousand for noise against music,
  tens for real against real.

  Args:
    real: `mel_moments` of real audio: of the batch, or the running average
      over every batch so far that the train step keeps (one batch of real
      clips is too noisy a target; BUILD_NOTES.md, issue 25).
    fake: [batch, slice_len, 1] generated clips.
    distance: one of MOMENT_DISTANCES.
  """
  return moment_distance(jax.lax.stop_gradient(real), mel_moments(fake, sample_rate),
                         distance)


def moment_distance(real: dict[str, Array], fake: dict[str, Array],
                    distance: str) -> Array:
  """`moment_matching_loss` between two `mel_moments`."""
  def covariance(m):
    return m["outer"] - jnp.outer(m["mean"], m["mean"])
  means = jnp.sum((fake["mean"] - real["mean"]) ** 2)
  if distance == "frechet":
    return means + frechet_covariance_term(covariance(real), covariance(fake))
  # The small constant keeps the norm's gradient finite where they agree.
  return means + jnp.sqrt(jnp.sum((covariance(fake) - covariance(real)) ** 2) + 1e-8)


def styled_moment_matching_loss(real: dict[str, Array], fake: Array, style: Array,
                                sample_rate: int, distance: str = "frobenius") -> Array:
  """`moment_matching_loss` of a class-conditional GAN: each style's
  generated clips against that style's real statistics (`real`: [styles,
  ...] running moments), weighted by the style's share of the clips."""
  num_styles = real["mean"].shape[0]
  sums = spectral.feature_sums_by_group(frechet_features(fake[..., 0], sample_rate),
                                        style, num_styles)
  count = sums["count"]
  safe = jnp.maximum(count, 1.0)
  fake_moments = {"mean": sums["sum"] / safe[:, None],
                  "outer": sums["outer"] / safe[:, None, None]}
  real = jax.lax.stop_gradient({"mean": real["mean"], "outer": real["outer"]})
  # One style at a time: a batched eigh under a sharded step hung XLA's CPU
  # backend (8 forced devices).
  losses = jnp.stack([moment_distance({k: v[s] for k, v in real.items()},
                                      {k: v[s] for k, v in fake_moments.items()},
                                      distance) for s in range(num_styles)])
  return jnp.sum(count / jnp.sum(count) * losses)


def update_styled_moments(moments: dict[str, Array], clips: Array, style: Array,
                          sample_rate: int, reducer: parallel.Reducer) -> dict[str, Array]:
  """The running real moments of each style ({"mean" [styles, 64], "outer"
  [styles, 64, 64], "batches" [styles]}) after a batch of real clips: each
  style present moves as the unconditioned average does (the plain mean of
  its batches so far, up to the MOMENTS_DECAY cap); the others stay."""
  num_styles = moments["mean"].shape[0]
  sums = reducer.sum(spectral.feature_sums_by_group(
      frechet_features(clips[..., 0], sample_rate), style, num_styles))
  count = sums["count"]
  present = count > 0
  safe = jnp.maximum(count, 1e-12)
  batch = {"mean": sums["sum"] / safe[:, None], "outer": sums["outer"] / safe[:, None, None]}
  t = moments["batches"]
  decay = jnp.minimum(MOMENTS_DECAY, t / (t + 1.0))

  def move(avg, new):
    shape = (-1,) + (1,) * (avg.ndim - 1)
    d = decay.reshape(shape)
    return jnp.where(present.reshape(shape), d * avg + (1 - d) * new, avg)

  return {"mean": move(moments["mean"], batch["mean"]),
          "outer": move(moments["outer"], batch["outer"]),
          "batches": t + present.astype(jnp.float32)}


def frechet_covariance_term(fixed: Array, cov: Array, floor: float = 1e-6) -> Array:
  """tr(A + B - 2 (A B)^1/2) of covariances A = `fixed` (no gradient) and B.

  (A B)^1/2 has the eigenvalues of the symmetric A^1/2 B A^1/2, so its trace
  is the sum of their square roots (each at least `floor`, which bounds the
  gradient where an eigenvalue vanishes); A^1/2 comes from A's eigenvectors.
  """
  w, v = jnp.linalg.eigh(jax.lax.stop_gradient(fixed))
  root = (v * jnp.sqrt(jnp.maximum(w, 0.0))) @ v.T
  inner = root @ cov @ root
  eigenvalues = jnp.linalg.eigvalsh(0.5 * (inner + inner.T))
  return (jnp.trace(fixed) + jnp.trace(cov)
          - 2.0 * jnp.sum(jnp.sqrt(jnp.maximum(eigenvalues, floor))))


def r1_penalty(critic: Callable[[Array], Array], real: Array) -> Array:
  """R1 (Mescheder et al., 2018): mean over examples of |grad_x critic(x)|^2
  at the real clips; the loss adds r1_weight / 2 times it."""
  grads = jax.grad(lambda x: jnp.sum(critic(x)))(real)
  return jnp.mean(jnp.sum(grads.reshape(grads.shape[0], -1) ** 2, -1))


def _groups(sums: dict[str, Any]) -> list[dict[str, Any]]:
  """`spectral.feature_sums_by_group` totals -> one `feature_sums` per group."""
  return [{key: value[g] for key, value in sums.items()}
          for g in range(len(sums["count"]))]


class GANState(struct.PyTreeNode):
  """Both networks, their optimizer states and the generator's EMA: one pytree.

  `*_batch_stats` are empty dicts unless the models use batch norm;
  `real_moments` is one unless `gan.moment_weight` > 0, when it holds the
  running average of real audio's `mel_moments` (MOMENTS_DECAY).
  """
  step: Array
  g_params: Any
  d_params: Any
  g_opt_state: Any
  d_opt_state: Any
  ema_params: Any
  g_batch_stats: Any
  d_batch_stats: Any
  skipped_updates: Array
  real_moments: Any
  g_tx: optax.GradientTransformation = struct.field(pytree_node=False)
  d_tx: optax.GradientTransformation = struct.field(pytree_node=False)


def critic_loss(kind: str, d_real: Array, d_fake: Array) -> Array:
  """The discriminator's loss (before any gradient penalty)."""
  if kind == "wgan-gp":
    return jnp.mean(d_fake) - jnp.mean(d_real)
  if kind == "bce":
    return jnp.mean(jax.nn.softplus(-d_real)) + jnp.mean(jax.nn.softplus(d_fake))
  if kind == "hinge":
    return jnp.mean(jax.nn.relu(1 - d_real)) + jnp.mean(jax.nn.relu(1 + d_fake))
  raise ValueError(f"loss {kind!r}; allowed: {list(LOSSES)}")


def generator_loss(kind: str, d_fake: Array) -> Array:
  """The generator's loss (non-saturating for BCE)."""
  if kind == "bce":
    return jnp.mean(jax.nn.softplus(-d_fake))
  if kind in ("wgan-gp", "hinge"):
    return -jnp.mean(d_fake)
  raise ValueError(f"loss {kind!r}; allowed: {list(LOSSES)}")


def gradient_penalty(critic: Callable[[Array], Array], real: Array, fake: Array,
                     alpha: Array) -> Array:
  """WGAN-GP's penalty: mean over examples of (|grad_x critic(x_hat)| - 1)^2.

  Args:
    critic: [batch, ...] -> [batch] scores.
    real, fake: [batch, ...] inputs.
    alpha: [batch] mixing weights in [0, 1]; x_hat = real + alpha (fake - real).
  """
  alpha = alpha.reshape((-1,) + (1,) * (real.ndim - 1))
  x_hat = real + alpha * (fake - real)
  grads = jax.grad(lambda x: jnp.sum(critic(x)))(x_hat)
  norms = jnp.sqrt(jnp.sum(grads.reshape(grads.shape[0], -1) ** 2, -1) + 1e-12)
  return jnp.mean((norms - 1.0) ** 2)


class GANTask:
  """WaveGAN training, evaluation and sampling (see the module docstring)."""

  valid_metric = "frechet"
  progress_keys = ("d_loss", "g_loss", "gp", "wdist")
  # The last eval's figures beside the losses on the progress bar.
  progress_valid_keys = ("frechet_ratio", "salience_ratio")
  # WORKDIR/learning_curve.png, redrawn after every eval.
  curve_keys = ("frechet_ratio", "salience_ratio", "chroma_distance")

  def __init__(self, config: config_dict.ConfigDict, representation: Any):
    self.config = config
    self.representation = representation
    self.sample_rate = int(config.data.audio.sample_rate)
    self.slice_len = int(config.data.slice_len)
    self.batch_size = int(config.batch_size)
    self.critic_steps = int(config.gan.critic_steps)
    self.latent_dim = int(config.model.latent_dim)
    # A class-conditional GAN's styles (`config.condition.enabled`).
    self.styles = [str(x) for x in config.styles] if config.condition.enabled else []
    if config.condition.enabled and not self.styles:
      raise errors.UserError(
          "config.condition.enabled=True needs styles: train on a labelled "
          "dataset (prepare --labels=...), whose labels fill config.styles.")
    self.generator = build_generator(config)
    self.discriminator = build_discriminator(config)
    self.model = self.generator
    self.learning_rate_fn = self._schedule(config.learning_rate)
    # Made once: the optimizers are part of the state's tree structure, which
    # must be the same in every `init_state` (shardings are matched to it).
    # Two time-scale updates (Heusel et al., 2017): gan.d_learning_rate > 0
    # gives the discriminator its own rate.
    d_rate = config.gan.d_learning_rate or config.learning_rate
    self.g_tx = self._optimizer(config.learning_rate)
    self.d_tx = self._optimizer(d_rate)

  # --- state -----------------------------------------------------------------

  def _schedule(self, learning_rate: float) -> optax.Schedule:
    """Constant, or (gan.lr_end_factor < 1) a cosine decay over the run to
    that fraction of `learning_rate`."""
    factor = float(self.config.gan.lr_end_factor)
    if factor == 1.0:
      return optax.constant_schedule(learning_rate)
    return optax.cosine_decay_schedule(learning_rate, int(self.config.num_train_steps),
                                       alpha=factor)

  def _optimizer(self, learning_rate: float) -> optax.GradientTransformation:
    # A constant rate is passed as a number, so the Adam state holds no
    # schedule count and older checkpoints keep their tree structure.
    rate = (learning_rate if self.config.gan.lr_end_factor == 1.0
            else self._schedule(learning_rate))
    return optax.adam(rate, b1=self.config.adam_b1, b2=self.config.adam_b2)

  def init_state(self, rng: Array) -> GANState:
    """Fresh generator, discriminator, Adam states and EMA (= the generator).

    Parameters, Adam moments and the EMA keep their `nn.Partitioned` logical
    axis names; the loop derives shardings from them and unboxes.
    """
    g_rng, d_rng = jax.random.split(rng)
    z = jnp.zeros((1, self.latent_dim), jnp.float32)
    # One pack of clips (model.stft_pack): the parameters' shapes do not
    # depend on the batch.
    x = jnp.zeros((int(self.config.model.stft_pack), self.slice_len, 1), jnp.float32)
    style = (lambda n: jnp.zeros((n,), jnp.int32)) if self.styles else (lambda n: None)
    g_vars = self.generator.init({"params": g_rng}, z, train=False, style=style(1))
    d_vars = self.discriminator.init({"params": d_rng}, x, train=False,
                                     style=style(x.shape[0]))
    g_tx, d_tx = self.g_tx, self.d_tx
    return GANState(
        step=jnp.zeros((), jnp.int32), g_params=g_vars["params"],
        d_params=d_vars["params"], g_opt_state=g_tx.init(g_vars["params"]),
        d_opt_state=d_tx.init(d_vars["params"]),
        ema_params=g_vars["params"],
        g_batch_stats=g_vars.get("batch_stats", {}),
        d_batch_stats=d_vars.get("batch_stats", {}),
        skipped_updates=jnp.zeros((), jnp.int32),
        real_moments=self._initial_moments(),
        g_tx=g_tx, d_tx=d_tx)

  def _initial_moments(self) -> dict[str, Array]:
    """Moment matching's running real statistics before any batch: the
    mean and mean outer product of the log-mel frames (a conditioned GAN's
    per style, with the count of batches each style was in); {} without
    moment matching."""
    if self.config.gan.moment_weight <= 0:
      return {}
    per_style = (len(self.styles),) if self.styles else ()
    moments = {"mean": jnp.zeros(per_style + (FRECHET_N_MELS,), jnp.float32),
               "outer": jnp.zeros(per_style + (FRECHET_N_MELS,) * 2, jnp.float32)}
    if self.styles:
      moments["batches"] = jnp.zeros(per_style, jnp.float32)
    return moments

  @staticmethod
  def eval_params(state: GANState) -> dict[str, Any]:
    """The EMA generator's variables: what evaluation, samples and export use."""
    variables = {"params": state.ema_params}
    if state.g_batch_stats:
      variables["batch_stats"] = state.g_batch_stats
    return variables

  # --- the compiled step ------------------------------------------------------

  def latents(self, rng: Array, n: int) -> Array:
    """WaveGAN's latent prior: uniform in [-1, 1]^latent_dim."""
    return jax.random.uniform(rng, (n, self.latent_dim), jnp.float32, -1.0, 1.0)

  def _generate(self, params, batch_stats, z, train: bool, style=None):
    """(clips, batch statistics) of the generator on z (and a conditioned
    one's [batch] `style` ids; ignored by an unconditioned one)."""
    variables = {"params": params}
    style = style if self.styles else None
    if batch_stats:
      variables["batch_stats"] = batch_stats
      out, updates = self.generator.apply(variables, z, train=train, style=style,
                                          mutable=["batch_stats"])
      return out, updates["batch_stats"]
    return self.generator.apply(variables, z, train=train, style=style), batch_stats

  def _critic(self, params, batch_stats, x, rng, features: bool = False, style=None):
    """(logits, batch statistics) of the discriminators on x; with
    `features`, (logits, batch statistics, their sown hidden features). A
    projection discriminator reads the clips' `style` ids."""
    variables = {"params": params}
    style = style if self.styles else None
    mutable = ["intermediates"] if features else []
    if batch_stats:
      variables["batch_stats"] = batch_stats
      mutable.append("batch_stats")
    # `mutable=[]` would still return a pair: False when nothing is collected.
    out = self.discriminator.apply(variables, x, train=True, style=style,
                                   rngs={"phase_shuffle": rng},
                                   mutable=mutable or False)
    out, updates = out if mutable else (out, {})
    batch_stats = updates.get("batch_stats", batch_stats)
    if features:
      return out, batch_stats, jax.tree.leaves(updates["intermediates"])
    return out, batch_stats

  def train_step(self, state: GANState, batch: dict[str, Array], rng: Array,
                 reducer: parallel.Reducer = parallel.IDENTITY
                 ) -> tuple[GANState, dict[str, Array]]:
    """`critic_steps` discriminator updates, then one generator update.

    Each update's batch is split into `config.grad_accum_steps` micro-batches
    whose gradients are averaged (and averaged over the devices by
    `reducer`). Latents and gradient-penalty mixing weights are drawn for the
    global batch and split, so neither accumulation nor the parallel mode
    changes them; the phase shuffle's key is folded with the micro-batch and
    the device.

    Args:
      state: the GAN state.
      batch: {"audio": [batch, critic_steps, slice_len, 1]} (the step's
        share of the batch; a conditioned GAN's also "style": [batch,
        critic_steps] ids, which its fake clips of each update take too).
      rng: the run's step key.
      reducer: averages over the devices (parallel.reduce; identity under jit).
    """
    kind, gp_weight = self.config.gan.loss, float(self.config.gan.gp_weight)
    r1_weight = float(self.config.gan.r1_weight)
    num = self.config.grad_accum_steps
    rng = jax.random.fold_in(rng, state.step)
    critic_rng, g_rng = jax.random.split(rng)
    real_batches = jnp.swapaxes(batch["audio"], 0, 1)  # [critic_steps, b, len, 1]
    n = real_batches.shape[1]
    # [critic_steps, b] style ids (unused zeros for an unconditioned GAN).
    real_styles = (jnp.swapaxes(batch["style"], 0, 1) if self.styles
                   else jnp.zeros(real_batches.shape[:2], jnp.int32))
    devices = reducer.num_devices()

    def global_draw(values: Array) -> Array:
      """This device's micro-batches of values drawn for the global batch."""
      return steps.micro_batches(reducer.device_share(values), num)

    def micro_key(key: Array, index: Array) -> Array:
      return key if num == 1 else jax.random.fold_in(key, index)

    def average(tree):
      return reducer.mean(jax.tree.map(lambda x: x / num, tree))

    def critic_update(carry, inputs):
      d_params, d_opt_state, d_stats = carry
      real, styles, key = inputs
      z_key, alpha_key, real_key, fake_key, gp_key = jax.random.split(key, 5)
      real_key, fake_key, gp_key = (reducer.device_key(k)
                                    for k in (real_key, fake_key, gp_key))

      def micro(inputs):
        real, style, z, alpha, index = inputs
        fake, _ = self._generate(state.g_params, state.g_batch_stats, z, train=True,
                                 style=style)
        fake = jax.lax.stop_gradient(fake)

        def loss_fn(d_params):
          d_real, stats = self._critic(d_params, d_stats, real,
                                       micro_key(real_key, index), style=style)
          d_fake, stats = self._critic(d_params, stats, fake,
                                       micro_key(fake_key, index), style=style)
          loss = critic_loss(kind, d_real, d_fake)
          gp = jnp.zeros((), jnp.float32)
          if gp_weight > 0:
            gp = gradient_penalty(
                lambda x: self._critic(d_params, d_stats, x,
                                       micro_key(gp_key, index), style=style)[0],
                real, fake, alpha)
          r1 = jnp.zeros((), jnp.float32)
          if r1_weight > 0:
            r1 = r1_penalty(
                lambda x: self._critic(d_params, d_stats, x,
                                       micro_key(real_key, index), style=style)[0],
                real)
          wdist = jnp.mean(d_real) - jnp.mean(d_fake)
          total = loss + gp_weight * gp + 0.5 * r1_weight * r1
          return total, (loss, gp, r1, wdist, stats)

        (_, (loss, gp, r1, wdist, stats)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(d_params)
        # Batch statistics only come with one micro-batch (check_config).
        return grads, {"d_loss": loss, "gp": gp, "r1": r1, "wdist": wdist}, stats

      grads, metrics, d_stats = steps.accumulate(
          micro, (steps.micro_batches(real, num), steps.micro_batches(styles, num),
                  global_draw(self.latents(z_key, n * devices)),
                  global_draw(jax.random.uniform(alpha_key, (n * devices,))),
                  jnp.arange(num)), num)
      grads, metrics = average((grads, metrics))
      updates, d_opt_state = state.d_tx.update(grads, d_opt_state, d_params)
      d_params = optax.apply_updates(d_params, updates)
      return (d_params, d_opt_state, d_stats), {
          **metrics, "d_grad_norm": optax.tree.norm(grads)}

    (d_params, d_opt_state, d_stats), critic = jax.lax.scan(
        critic_update, (state.d_params, state.d_opt_state, state.d_batch_stats),
        (real_batches, real_styles, jax.random.split(critic_rng, self.critic_steps)))

    z_key, fake_key = jax.random.split(g_rng)
    fake_key = reducer.device_key(fake_key)
    ms_weight = float(self.config.gan.mode_seeking_weight)
    fm_weight = float(self.config.gan.feature_matching_weight)
    cov_weight = float(self.config.gan.coverage_weight)
    mm_weight = float(self.config.gan.moment_weight)
    real_moments = state.real_moments
    if mm_weight > 0 and self.styles:  # Each style's running statistics.
      real_moments = update_styled_moments(real_moments, real_batches[-1],
                                           real_styles[-1], self.sample_rate, reducer)
    elif mm_weight > 0:  # The running average of real audio's statistics.
      t = state.step.astype(jnp.float32)
      decay = jnp.minimum(MOMENTS_DECAY, t / (t + 1.0))
      batch_moments = reducer.mean(mel_moments(real_batches[-1], self.sample_rate))
      real_moments = jax.tree.map(lambda avg, new: decay * avg + (1 - decay) * new,
                                  real_moments, batch_moments)

    def g_micro(inputs):
      z, real, style, index = inputs
      real_features = []
      if fm_weight > 0:  # The last critic update's real clips.
        _, _, real_features = self._critic(d_params, d_stats, real,
                                           micro_key(fake_key, index), features=True,
                                           style=style)

      def g_loss_fn(g_params):
        # A conditioned generator makes the last critic update's styles.
        fake, g_stats = self._generate(g_params, state.g_batch_stats, z, train=True,
                                       style=style)
        extra = {"mode_seeking": jnp.zeros((), jnp.float32),
                 "feature_matching": jnp.zeros((), jnp.float32),
                 "coverage": jnp.zeros((), jnp.float32),
                 "moments": jnp.zeros((), jnp.float32)}
        d_fake, _, *fake_features = self._critic(
            d_params, d_stats, fake, micro_key(fake_key, index),
            features=fm_weight > 0, style=style)
        if fm_weight > 0:
          extra["feature_matching"] = feature_matching_loss(real_features,
                                                            fake_features[0])
        if ms_weight > 0:
          extra["mode_seeking"] = mode_seeking_loss(fake, z)
        if cov_weight > 0:
          extra["coverage"] = coverage_loss(real, fake)
        if mm_weight > 0 and self.styles:
          extra["moments"] = styled_moment_matching_loss(
              real_moments, fake, style, self.sample_rate,
              self.config.gan.moment_distance)
        elif mm_weight > 0:
          extra["moments"] = moment_matching_loss(
              real_moments, fake, self.sample_rate, self.config.gan.moment_distance)
        loss = generator_loss(kind, d_fake)
        total = (loss + ms_weight * extra["mode_seeking"]
                 + fm_weight * extra["feature_matching"]
                 + cov_weight * extra["coverage"]
                 + mm_weight * extra["moments"])
        return total, (g_stats, {"g_loss": loss, **extra})

      (_, (g_stats, losses)), g_grads = jax.value_and_grad(
          g_loss_fn, has_aux=True)(state.g_params)
      return g_grads, losses, g_stats

    g_grads, g_losses, g_stats = steps.accumulate(
        g_micro, (global_draw(self.latents(z_key, n * devices)),
                  steps.micro_batches(real_batches[-1], num),
                  steps.micro_batches(real_styles[-1], num), jnp.arange(num)),
        num)
    g_grads, g_losses = average((g_grads, g_losses))
    g_loss = g_losses["g_loss"]
    updates, g_opt_state = state.g_tx.update(g_grads, state.g_opt_state,
                                             state.g_params)
    g_params = optax.apply_updates(state.g_params, updates)
    decay = self.config.gan.ema_decay
    if self.config.gan.ema_warmup:  # (1 + t) / (10 + t) until that reaches decay.
      t = state.step.astype(jnp.float32)
      decay = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    ema_params = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p,
                              state.ema_params, g_params)
    g_grad_norm = optax.tree.norm(g_grads)
    metrics = {k: jnp.mean(v) for k, v in critic.items()}
    finite = (jnp.all(jnp.isfinite(critic["d_loss"]))
              & jnp.all(jnp.isfinite(critic["d_grad_norm"]))
              & jnp.isfinite(g_loss) & jnp.isfinite(g_grad_norm))
    new_state = state.replace(
        step=state.step + 1, g_params=g_params, d_params=d_params,
        g_opt_state=g_opt_state, d_opt_state=d_opt_state, ema_params=ema_params,
        g_batch_stats=g_stats, d_batch_stats=d_stats, real_moments=real_moments)
    metrics.update(g_grad_norm=g_grad_norm, **g_losses,
                   nonfinite=(~finite).astype(jnp.float32))
    return state_lib.keep_if_finite(new_state, state, finite), metrics

  # --- data -------------------------------------------------------------------

  def prepare_data(self, data_dir: str) -> str:
    """The audio dataset to train on: `data_dir` itself, or its rendered cache."""
    return audio.ensure_audio_dir(data_dir, self.representation)

  def create_train_dataset(self, audio_dir: str):
    """Batches of {"audio": [b, critic_steps, slice_len, 1]} for this process
    (a conditioned GAN's also "style": [b, critic_steps] ids)."""
    config = self.config
    per_process = self.batch_size // jax.process_count()
    ds = audio.create_train_dataset(
        audio_dir, slice_len=self.slice_len,
        global_batch_size=self.batch_size * self.critic_steps, seed=config.seed,
        num_workers=config.data.num_workers,
        prefetch_buffer_size=config.data.prefetch_buffer_size,
        silence_threshold=config.data.silence_threshold,
        normalize=config.data.normalize, on_bad_record=config.data.bad_records,
        styles=tuple(self.styles))
    shape = (per_process, self.critic_steps, self.slice_len, 1)
    styled = lambda b: ({"style": b["style"].reshape(shape[:2])} if self.styles else {})
    return ds.map(lambda b: {"audio": b["audio"].reshape(shape),
                             "bad_records": b["bad_records"], **styled(b)})

  def num_eval_clips(self) -> int:
    n = self.config.num_eval_batches
    return self.batch_size * (n if n > 0 else 8)

  def eval_data(self, audio_dir: str, split: str = "valid") -> dict[str, Any]:
    """Statistics of `split`'s real clips, a real-vs-real baseline, the latents.

    `num_eval_batches` batches of generated clips (8 when it is -1) are
    compared with up to as many real clips of the split. The baseline
    compares as many clips of another split (train; valid when `split` is
    train) with the same real clips, so that `frechet_ratio` (generated over
    baseline) is 1 for a generator as close as real audio gets, whatever the
    clip count.

    A conditioned GAN is compared style by style too: its real clips are
    balanced over the styles (`audio.eval_clips_by_style`), its generated
    clips take the styles in turn, and each style's generated clips are
    compared with its real ones (beside the same for the baseline's).
    """
    config = self.config
    count = self.num_eval_clips()
    other = "valid" if split == "train" else "train"
    real, num_real = self._real_sums(audio_dir, split, count)
    baseline, _ = self._real_sums(audio_dir, other, count)
    stats = spectral.stats_from_sums(real["mel"])
    base_salience, base_profile = spectral.pitch_summary(baseline["pitch"])
    salience, profile = spectral.pitch_summary(real["pitch"])
    z = np.asarray(self.latents(jax.random.PRNGKey(config.seed + 1), count))
    data = {"real_stats": stats, "real_profile": profile, "z": z,
            "num_real": num_real,
            "baseline": {
                "frechet": spectral.frechet_distance(
                    *spectral.stats_from_sums(baseline["mel"]), *stats),
                "chroma_distance": spectral.chroma_distance(base_profile, profile),
                "salience": salience, "split": other}}
    if self.styles:
      data["style"] = np.arange(count, dtype=np.int32) % len(self.styles)
      data["style_stats"] = [spectral.stats_from_sums(group)
                             for group in _groups(real["mel_by_style"])]
      data["baseline"]["frechet_by_style"] = [
          spectral.frechet_distance(*spectral.stats_from_sums(group), *real_stats)
          for group, real_stats in zip(_groups(baseline["mel_by_style"]),
                                       data["style_stats"])]
    return data

  def _real_sums(self, audio_dir: str, split: str, count: int):
    """(feature sums of up to `count` real clips of `split`, their number)."""
    config = self.config
    kwargs = dict(slice_len=self.slice_len, split=split, max_clips=count,
                  silence_threshold=config.data.silence_threshold,
                  normalize=config.data.normalize)
    if self.styles:
      clips, styles = audio.eval_clips_by_style(audio_dir, tuple(self.styles), **kwargs)
    else:
      clips, styles = audio.eval_clips(audio_dir, **kwargs), None
    if len(clips) < 2:
      raise ValueError(f"{audio_dir}: split {split!r} has {len(clips)} non-silent "
                       f"clips of {self.slice_len} samples; the Frechet distance "
                       "needs at least 2.")
    features = jax.jit(self._features)
    totals = None
    for start in range(0, len(clips), self.batch_size):
      batch = slice(start, start + self.batch_size)
      sums = features(jnp.asarray(clips[batch]),
                      None if styles is None else jnp.asarray(styles[batch]))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return jax.device_get(totals), len(clips)

  def eval_batches(self, eval_data: dict[str, Any]):
    """This process's share of the fixed latents, one global batch at a time."""
    z = eval_data["z"]
    per_process = self.batch_size // jax.process_count()
    lo = jax.process_index() * per_process
    for start in range(0, len(z), self.batch_size):
      batch = {"z": z[start:start + self.batch_size][lo:lo + per_process]}
      if self.styles:
        batch["style"] = eval_data["style"][start:start + self.batch_size][lo:lo + per_process]
      yield batch

  def batch_spec(self, split: str = "train") -> dict[str, jax.ShapeDtypeStruct]:
    """One global batch: real clips for training, latents for evaluation."""
    if split == "train":
      shape = (self.batch_size, self.critic_steps, self.slice_len, 1)
      spec = {"audio": jax.ShapeDtypeStruct(shape, jnp.float32)}
      if self.styles:
        spec["style"] = jax.ShapeDtypeStruct(shape[:2], jnp.int32)
      return spec
    spec = {"z": jax.ShapeDtypeStruct((self.batch_size, self.latent_dim), jnp.float32)}
    if self.styles:
      spec["style"] = jax.ShapeDtypeStruct((self.batch_size,), jnp.int32)
    return spec

  def sample_program(self, num_samples: int):
    """The EMA generator on `num_samples` latents, as `(fn, inputs)`:
    `fn(params, rng, z)` (a conditioned one's `fn(params, rng, z, style)`),
    the inputs abstract (ahead-of-time compiles)."""
    z = jax.ShapeDtypeStruct((num_samples, self.latent_dim), jnp.float32)
    if self.styles:
      fn = lambda params, rng, z, style: self.generator.apply(params, z, train=False,
                                                              style=style)
      return fn, (z, jax.ShapeDtypeStruct((num_samples,), jnp.int32))
    fn = lambda params, rng, z: self.generator.apply(params, z, train=False)
    return fn, (z,)

  def _features(self, clips: Array, style: Array | None = None) -> dict[str, Array]:
    """Log-mel and pitch sums of [batch, slice_len, 1] clips; clips with a
    NaN or Inf are scored as silence and counted. With the clips' [batch]
    `style` ids, also the log-mel sums of each style ("mel_by_style")."""
    clips, nonfinite = spectral.finite_clips(clips[..., 0])
    mel = frechet_features(clips, self.sample_rate)
    sums = {"mel": spectral.feature_sums(mel),
            "pitch": spectral.pitch_sums(clips, self.sample_rate),
            "nonfinite": nonfinite}
    if style is not None:
      sums["mel_by_style"] = spectral.feature_sums_by_group(mel, style, len(self.styles))
    return sums

  def eval_step(self, params: Any, batch: dict[str, Array]) -> dict[str, Array]:
    """Log-mel and pitch sums of the EMA generator's clips for `batch["z"]`
    (and a conditioned one's `batch["style"]`)."""
    style = batch.get("style") if self.styles else None
    if style is None:
      return self._features(self.generator.apply(params, batch["z"], train=False))
    clips = self.generator.apply(params, batch["z"], train=False, style=style)
    return self._features(clips, style)

  def summarize(self, totals: dict[str, Any], eval_data: dict[str, Any]
                ) -> dict[str, float]:
    """Frechet distance and pitch measures of the generated clips, each with
    real audio's figure at the same clip count beside it.

    - frechet: log-mel Frechet distance to the split's real clips;
      frechet_real: the same for real clips of another split (the
      baseline); frechet_ratio = frechet / frechet_real (1: as close as
      real audio gets).
    - salience: the generated clips' mean pitch salience
      (`spectral.pitch_features`); salience_real: the split's; and
      salience_ratio = salience / salience_real.
    - chroma_distance: L1 distance of the mean sorted chroma profiles to the
      split's; chroma_distance_real: the baseline's.
    - clips: generated clips scored; nonfinite_clips: those with NaN or Inf
      (scored as silence).
    - A conditioned GAN's, per style: style/STYLE/frechet (its generated
      clips against its real ones), style/STYLE/frechet_real (the
      baseline's) and style/STYLE/frechet_ratio, and the ratios' mean
      (frechet_ratio_by_style); style/STYLE/frechet_others, the mean
      distance of its generated clips to the other styles' real clips, and
      style_match, the share of styles whose generated clips lie nearest
      their own style's real clips. Each style has a share of the clips, so its
      distances are larger than the whole's (the distance's bias grows as
      the clip count falls); compare them with their own baseline.
    """
    mean, cov = spectral.stats_from_sums(totals["mel"])
    real_mean, real_cov = eval_data["real_stats"]
    baseline = eval_data["baseline"]
    frechet = spectral.frechet_distance(mean, cov, real_mean, real_cov)
    salience, profile = spectral.pitch_summary(totals["pitch"])
    by_style = {}
    if "mel_by_style" in totals:
      # distances[s, t]: style s's generated clips against style t's real ones.
      generated = [spectral.stats_from_sums(g) for g in _groups(totals["mel_by_style"])]
      distances = np.asarray([[spectral.frechet_distance(*g, *real) for real in
                               eval_data["style_stats"]] for g in generated])
      ratios = []
      for s, (name, base) in enumerate(zip(self.styles, baseline["frechet_by_style"])):
        ratios.append(distances[s, s] / max(base, 1e-12))
        by_style.update({f"style/{name}/frechet": distances[s, s],
                         f"style/{name}/frechet_real": base,
                         f"style/{name}/frechet_ratio": ratios[-1],
                         f"style/{name}/frechet_others": float(
                             np.delete(distances[s], s).mean())})
      by_style["frechet_ratio_by_style"] = float(np.mean(ratios))
      # The share of styles whose generated clips lie nearest their own
      # style's real clips (1: each style's clips sound like that style).
      by_style["style_match"] = float(np.mean(
          np.argmin(distances, axis=1) == np.arange(len(self.styles))))
    return {**by_style, "frechet": frechet, "frechet_real": baseline["frechet"],
            "frechet_ratio": frechet / max(baseline["frechet"], 1e-12),
            "salience": salience, "salience_real": baseline["salience"],
            "salience_ratio": salience / max(baseline["salience"], 1e-12),
            "chroma_distance": spectral.chroma_distance(
                profile, eval_data["real_profile"]),
            "chroma_distance_real": baseline["chroma_distance"],
            "clips": float(totals["pitch"]["clips"]),
            "nonfinite_clips": float(totals["nonfinite"]),
            "frames": float(totals["mel"]["count"])}

  # --- samples ----------------------------------------------------------------

  def generate(self, params: Any, z: np.ndarray, style: np.ndarray | None = None
               ) -> np.ndarray:
    """Clips [n, slice_len] for latents [n, latent_dim] (a conditioned
    generator's [n] `style` ids), in batches."""
    if self.styles and style is None:
      raise ValueError("a class-conditional GAN generates given the styles")
    style = np.zeros((len(z),), np.int32) if style is None else np.asarray(style, np.int32)
    generate = jax.jit(lambda p, z, s: self.generator.apply(
        p, z, train=False, **({"style": s} if self.styles else {})))
    out = [np.asarray(generate(params, jnp.asarray(z[i:i + self.batch_size]),
                               jnp.asarray(style[i:i + self.batch_size])))
           for i in range(0, len(z), self.batch_size)]
    return np.concatenate(out)[..., 0]

  def style_ids(self, style: str | None, n: int) -> np.ndarray | None:
    """[n] ids of `style` for a conditioned GAN (None: the styles in turn);
    None for an unconditioned one.

    Raises:
      errors.UserError: a style for an unconditioned GAN, or an unknown one
        (the message lists the known ones).
    """
    if style is not None:
      return np.full((n,), checks.style_index(self.styles, style, "GAN"), np.int32)
    return np.arange(n, dtype=np.int32) % len(self.styles) if self.styles else None

  def write_step_samples(self, params: Any, rng: Array, directory: str | None,
                         title: str) -> list[dict[str, str]]:
    """The training loop's periodic WAV + spectrogram samples."""
    return self.write_samples(params, rng, directory,
                              num_samples=self.config.sample.num_samples, title=title)

  def write_samples(self, params: Any, rng: Array, directory: str | None, *,
                    num_samples: int, interpolate_steps: int = 0,
                    title: str = "", style: str | None = None) -> list[dict[str, str]]:
    """Writes `sample_NNN.wav` and a spectrogram `.png` per clip.

    Args:
      params: the generator's variables (`eval_params`).
      rng: draws the latents.
      directory: created if missing; None generates without writing.
      num_samples: clips from independent latents (when not interpolating).
      interpolate_steps: if > 0, instead write this many clips along the
        spherical interpolation between two latents drawn from `rng`.
      title: prefix of each PNG's title.
      style: a conditioned GAN's style for every clip (None: the styles in
        turn; an interpolation: the first style).

    Returns:
      One {"wav": path, "image": png path} per clip.
    """
    if interpolate_steps > 0:
      ends = np.asarray(self.latents(rng, 2))
      z = slerp(ends[0], ends[1], interpolate_steps)
      ids = self.style_ids(style if style or not self.styles else self.styles[0], len(z))
    else:
      z = np.asarray(self.latents(rng, num_samples))
      ids = self.style_ids(style, len(z))
    clips = self.generate(params, z, ids)
    if style is not None:
      title = f"{title}{style}, "
    if directory is None:
      return []
    return samples.write_audio_samples(clips, self.sample_rate, directory, title)


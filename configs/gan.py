r"""WaveGAN (WGAN-GP) on the bundled JSB Chorales, rendered to 16 kHz audio.

    python -m musegen_jax.main --config=configs/gan.py --workdir=runs/gan
    python -m musegen_jax.main --config=configs/gan.py:smoke --workdir=runs/gan_smoke

Variants: "" (the WaveGAN setup: d = 64, batch 64, 16,384 samples at 16 kHz,
WGAN-GP with 5 critic updates per generator update, Adam 1e-4, betas 0.5/0.9),
"bce" (non-saturating loss, Adam 2e-4, betas 0.5/0.999, one critic update),
"hinge" (hinge loss, otherwise as bce), "cpu" (the recipe that learns tonal
audio on a 2-core CPU in under 30 minutes: four voices of harmonic
oscillators holding each pitch for 64 ms, STFT discriminators on patches of
packed clips, hinge loss, the coverage term, moment matching by the Frechet
distance), and "smoke"
(a tiny model that trains on a CPU in about a minute); "smoke" combines with the others, e.g.
"smoke,bce" or "smoke,cpu".

The chorales are rendered once by the additive synthesizer (`data/synth.py`)
into a cache beside the prepared shards, keyed by `data.audio`. To train on
your own recordings, prepare a folder of WAV/FLAC/OGG files
(`python -m musegen_jax.prepare --input=DIR --output=OUT --sample_rate=16000`)
and pass `--config.data.dir=OUT`. Any field can be overridden on the command
line; a misspelt key fails before any compute.
"""

from ml_collections import config_dict

from musegen_jax import config_defaults

VARIANTS = ("smoke", "bce", "hinge", "cpu")


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """Returns the config of the comma-separated variants in `arg`."""
  variants = [v for v in (arg or "").split(",") if v]
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown or sum(v in variants for v in ("bce", "hinge", "cpu")) > 1:
    raise ValueError(f"Unknown or conflicting config variants {variants!r}; "
                     f"known: {list(VARIANTS)} (at most one of bce, hinge, cpu).")
  # Shared keys (seed, batch, steps, Adam, logging, checkpoints, parallelism):
  # musegen_jax/config_defaults.py.
  config = config_defaults.default_config("gan")

  config.model = config_dict.ConfigDict()
  config.model.name = "wavegan"  # musegen_jax/models/wavegan.py
  # Model dimension d: the generator's last hidden layer has d channels, the
  # first 16 d (32 d for slices over 16,384).
  config.model.dim = 64
  config.model.latent_dim = 100
  config.model.kernel_size = 25
  # The discriminator's phase shuffle: random shifts of +-n samples.
  config.model.phase_shuffle = 2
  # The seed-style variant: batch norm in both networks.
  config.model.use_batchnorm = False
  # 1-D convolutions: "auto" (patches + matmul on CPU, where XLA's own are
  # 10-40x slower; XLA's convolutions on GPU/TPU), "matmul" or "lax".
  config.model.conv_impl = "auto"
  # Compute dtype; parameters stay float32.
  config.model.dtype = "float32"
  # Generator: "waveform" (WaveGAN's transposed convolutions at the sample
  # rate) or "oscillators" (transposed convolutions at one frame every
  # frame_hop samples driving a bank of sinusoids, oscillators_per_octave to
  # the octave from C1; models/audio_gan.py), whose clips are scaled to a
  # peak of 1 when normalize_output (as data.normalize scales real ones).
  config.model.generator = "waveform"
  config.model.frame_hop = 128
  config.model.oscillators_per_octave = 24
  # > 1: the bank holds each pitch (C1 to C7) with this many partials, and the
  # generator gives pitch and partial loudness, which add in log.
  config.model.harmonics = 1
  # > 0 (with harmonics > 1): each frame holds this many voices, each a
  # softmax over the bank's pitches and a loudness, as a chorale's parts do.
  config.model.voices = 0
  # The voices' lowest and highest MIDI pitch (the bank's are C1 = 24 and
  # C7 = 96).
  config.model.voice_range = (24, 96)
  # With voices: True, every frame gives its partials' loudness; False, one
  # learned timbre (the partials' log-amplitudes are parameters).
  config.model.frame_partials = True
  # With voices: True, each voice sounds its most likely pitch alone
  # (straight-through gradients); False, the softmax's mix of pitches.
  config.model.hard_voices = True
  # With voices: each voice chooses its pitch once per this many frames (a
  # power of two; 1: every frame), as notes last; loudness changes every frame.
  config.model.voice_pitch_frames = 1
  config.model.normalize_output = True
  # Discriminators, comma-separated: "waveform" (WaveGAN's, d_dim channels
  # first; 0: model.dim) and/or "stft" (log-power spectrograms at each of
  # stft_sizes, stft_dim channels), each column its own loss.
  config.model.discriminators = "waveform"
  config.model.d_dim = 0
  config.model.stft_sizes = (256, 1024, 4096)
  config.model.stft_dim = 64
  # The STFT discriminators also see their features' spread over the batch,
  # against mode collapse (progressive GANs' minibatch standard deviation).
  config.model.minibatch_std = False
  # The STFT discriminators score every position of their last layer (about
  # a tenth of a second) on its own, as PatchGAN and MelGAN do, instead of
  # one score per clip.
  config.model.stft_patches = False
  # > 1: the STFT discriminators score packs of this many clips together
  # (PacGAN, Lin et al., 2018): a generator that repeats itself is seen.
  config.model.stft_pack = 1
  # Kernel of the frame-rate convolutions (oscillator generator, STFT
  # discriminator).
  config.model.frame_kernel_size = 5

  config.gan = config_dict.ConfigDict()
  config.gan.loss = "wgan-gp"  # "wgan-gp", "bce" (non-saturating) or "hinge"
  config.gan.gp_weight = 10.0  # Gradient penalty lambda (0: none).
  # R1 penalty on real clips (Mescheder et al., 2018): r1_weight / 2 times
  # the mean squared gradient norm (0: none).
  config.gan.r1_weight = 0.0
  # The discriminator's Adam rate (0: learning_rate); two time scales when
  # they differ.
  config.gan.d_learning_rate = 0.0
  # Mode seeking (MSGAN): the generator also pays this times
  # 1 / (spectrogram distance / latent distance) between pairs of its clips,
  # against mode collapse (0: none).
  config.gan.mode_seeking_weight = 0.0
  # Feature matching (Salimans et al., 2016): the generator also pays this
  # times the distance between the batch means of the STFT discriminators'
  # hidden features on real and generated clips (0: none).
  config.gan.feature_matching_weight = 0.0
  # Coverage: the generator also pays this times the Chamfer distance between
  # real and generated spectrogram frames (tasks/gan.py coverage_loss), so
  # that every kind of real frame has a generated one near it (0: none).
  config.gan.coverage_weight = 0.0
  # Moment matching (McGan, Mroueh et al., 2017): the generator also pays
  # this times the distance between the mean and covariance of the batch's
  # real and generated log-mel frames (tasks/gan.py moment_matching_loss).
  config.gan.moment_weight = 0.0
  # How moment matching compares the covariances: "frobenius" (the norm of
  # their difference) or "frechet" (the Frechet distance's trace term, so
  # the term is the Frechet distance between the two Gaussians).
  config.gan.moment_distance = "frobenius"
  # Both learning rates decay on a cosine over num_train_steps to this
  # fraction of themselves (1: constant).
  config.gan.lr_end_factor = 1.0
  config.gan.critic_steps = 5  # Discriminator updates per generator update.
  config.gan.ema_decay = 0.999  # EMA of the generator: evaluated and exported.
  # Decay min(ema_decay, (1 + step) / (10 + step)): the EMA follows the
  # generator early on instead of averaging in its initialisation.
  config.gan.ema_warmup = False

  config.data = config_dict.ConfigDict()
  # A directory written by `python -m musegen_jax.prepare`: music files
  # (rendered to audio with `data.audio`) or audio files. Empty: the bundled
  # JSB Chorales.
  config.data.dir = ""
  config.data.representation = "audio"
  # Sample rate and synthesizer of the rendered audio (data/synth.py); a
  # different setting renders a new cache. `soundfont` (an .sf2 path) renders
  # with FluidSynth instead (needs fluidsynth and pyfluidsynth).
  config.data.audio = config_dict.ConfigDict()
  config.data.audio.sample_rate = 16_000
  config.data.audio.num_harmonics = 6
  config.data.audio.harmonic_decay = 0.6
  config.data.audio.attack = 0.01
  config.data.audio.decay = 0.4
  config.data.audio.sustain = 0.5
  config.data.audio.release = 0.1
  config.data.audio.gain = 0.2
  config.data.audio.soundfont = ""
  config.data.audio.program = -1
  # Samples per training clip: 16384, 32768 or 65536.
  config.data.slice_len = 16_384
  # Slices whose RMS stays below this (about -46 dBFS) are skipped as silence.
  config.data.silence_threshold = 0.005
  # Scale every clip to a peak of 1.
  config.data.normalize = True
  config.data.num_workers = 2
  config.data.prefetch_buffer_size = 8
  # A shard record that does not decode: "error" (names shard and record) or
  # "skip" (a warning with the same).
  config.data.bad_records = "error"

  config.batch_size = 64  # Per critic update and per generator update.
  config.num_train_steps = 100_000
  config.learning_rate = 1e-4
  config.adam_b1 = 0.5
  config.adam_b2 = 0.9
  # Every eval: the Frechet distance between log-mel statistics of the EMA
  # generator's clips and held-out (valid) real clips, on this many batches
  # of generated clips and as many real ones. The best checkpoint is the
  # least distant.
  config.eval_every_steps = 2_000
  config.num_eval_batches = 8
  config.checkpoint_every_steps = 2_000
  # Samples: WAV files and spectrogram PNGs.
  # Class-conditional GAN (tasks/gan.py): with enabled=True, on a labelled
  # config.data.dir (prepare --labels=... or --input=music21:...), the
  # generator adds a learned embedding of each clip's style to z and every
  # discriminator is a projection discriminator; evaluation adds each style's
  # Frechet distance; sample with --style=NAME. styles: filled from the data.
  config.condition = config_dict.ConfigDict(dict(enabled=False))
  config.styles = ()

  config.sample = config_dict.ConfigDict()
  config.sample.num_samples = 4

  if "bce" in variants or "hinge" in variants:
    config.gan.loss = "bce" if "bce" in variants else "hinge"
    config.gan.gp_weight = 0.0
    config.gan.critic_steps = 1
    config.learning_rate = 2e-4
    config.adam_b2 = 0.999
  if "cpu" in variants:
    # Learns tonal audio on a 2-core CPU in under 30 minutes (BUILD_NOTES.md,
    # issue 25): four voices of harmonic oscillators on the semitone grid,
    # multi-resolution STFT discriminators scoring patches of packed clips,
    # hinge loss with 1:1 updates, the coverage term against mode collapse and
    # moment matching against a running average of real audio's log-mel
    # statistics.
    config.model.generator = "oscillators"
    config.model.harmonics = 6
    config.model.oscillators_per_octave = 12
    config.model.voices = 4
    config.model.voice_range = (36, 84)  # C2 to C6: a choir's range.
    config.model.frame_partials = False
    config.model.hard_voices = False
    # Pitches held for 8 frames (64 ms; a chorale's 16th note lasts 150 ms):
    # salience ratio 0.88 on test where every-frame choices gave 0.75.
    config.model.voice_pitch_frames = 8
    config.model.discriminators = "stft"
    config.model.minibatch_std = True
    config.model.stft_patches = True
    config.model.stft_pack = 2
    config.gan.loss = "hinge"
    config.gan.gp_weight = 0.0
    config.gan.critic_steps = 1
    config.gan.coverage_weight = 30.0
    config.gan.moment_weight = 1.0
    # Moment matching by the Frechet distance's own covariance term: test
    # frechet_ratio 2.53 where the Frobenius norm gave 3.28 (issue 25).
    config.gan.moment_distance = "frechet"
    config.learning_rate = 4e-4
    config.gan.d_learning_rate = 4e-4
    config.gan.ema_warmup = True
    config.adam_b2 = 0.9
    config.batch_size = 32
    config.num_train_steps = 2_500
    config.log_every_steps = 50
    # Scored often on 512 clips: the best checkpoint is the least distant.
    config.eval_every_steps = 250
    config.num_eval_batches = 16
    config.checkpoint_every_steps = 250
    config.sample_every_steps = 1_000
  if "smoke" in variants:
    config.model.dim = 4
    config.model.stft_dim = 4
    config.data.num_workers = 0
    config.batch_size = 8
    config.gan.critic_steps = min(config.gan.critic_steps, 2)
    config.num_train_steps = 120
    config.learning_rate *= 5
    config.log_every_steps = 10
    config.eval_every_steps = 60
    config.num_eval_batches = 2
    config.checkpoint_every_steps = 60
    config.sample_every_steps = 120
    config.sample.num_samples = 2
  return config

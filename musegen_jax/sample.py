r"""Samples from an export bundle: MIDI + piano rolls, or WAV + spectrograms.

    python -m musegen_jax.sample --export=exports/lstm --output_dir=samples \
        --num_samples=8 --length=1024 --temperature=1.0 --top_p=0.95 --seed=0
    python -m musegen_jax.sample --export=exports/lstm --output_dir=samples \
        --primer=my_tune.mid
    python -m musegen_jax.sample --export=exports/gan --output_dir=wavs \
        --num_samples=16 --seed=3
    python -m musegen_jax.sample --export=exports/gan --output_dir=walk \
        --interpolate_steps=8 --seed=3
    python -m musegen_jax.sample --export=exports/styles_lstm --output_dir=bach \
        --style=bach --guidance=2
    python -m musegen_jax.sample --export=exports/vae --output_dir=vae_samples
    python -m musegen_jax.sample --export=exports/vae --output_dir=vae_walk \
        --endpoints=A.mid,B.mid --interpolate_steps=8 --temperature=0.5

Token models draw all samples in one compiled loop that carries the model's
state from token to token (`--length`, `--temperature`, `--top_k`, `--top_p`,
`--primer`). The GAN generates WAV clips from random latents, or with
`--interpolate_steps=N` N clips along the spherical interpolation between two
latents drawn from `--seed`. The VAE decodes latents drawn from its prior
(`--length` defaults to its training window); with `--interpolate_steps=N`
it decodes N points of the spherical interpolation between two prior draws,
or, with `--endpoints=A.mid,B.mid`, between the posterior means of the two
pieces' first windows (ends included: the first and last files decode A's
and B's latents). Every point of an interpolation is sampled at
`--temperature` with the same noise, so neighbours differ only through z.

A VAE trained on a labelled dataset transfers a piece to another style:
`--transfer=A.mid --to_style=NAME` encodes A's first window, moves its latent
by `--strength` (default 1) times the target style's mean latent minus its
own style's (`--from_style`, or the style whose mean lies nearest; the means
are in the bundle), and writes `source.mid`/`.png` (the window the VAE read)
beside `--num_samples` decodings of the moved latent. A style-conditioned
VAE (`config.condition.enabled`) also decodes it with the target style,
`--strength` of the way from the source's (`--guidance` applies).
`--windows=N` transfers A's first N windows (each encoded, moved and decoded)
and joins them, in the source as in each sample.

A style-conditioned token model or VAE (`config.condition.enabled`) samples
`--style=NAME` (one of the styles in its bundle; none: unconditioned), with
classifier-free guidance `--guidance=W` (1: the conditioned model alone; >1
mixes in the unconditioned pass, l_u + W (l_c - l_u), in the same compiled
loop). A class-conditional GAN (`configs/gan.py` with
`config.condition.enabled`) writes clips of `--style` (none: its styles in
turn). A VAE trained on a labelled dataset, conditioned or not, draws the
latents of `--style` samples from that style's region of its latent space
(the mean and spread of the style's train posteriors, stored in the bundle;
`--nostyle_prior`: from N(0, I), the label alone).

`--render_audio` writes a WAV beside each MIDI file through the project's
own additive synthesizer (`data/synth.py`), so the samples can be heard
without a MIDI player; a GAN writes WAV files anyway.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import flags

from musegen_jax import cli
from musegen_jax import errors
from musegen_jax import runtime

# Before note_seq is imported: see runtime.setup_if_run_as_command.
runtime.setup_if_run_as_command(__name__)

# Tokens (or piano-roll frames) a sample has unless --length says otherwise.
DEFAULT_LENGTH = 1024

FLAGS = flags.FLAGS
flags.DEFINE_string("export", None, "Bundle written by musegen_jax.export.")
flags.DEFINE_string("output_dir", None, "Where the MIDI and PNG files go.")
flags.DEFINE_integer("num_samples", 4, "Number of samples, drawn as one batch.")
flags.DEFINE_integer("length", None,
                     "Tokens to generate per sample (default: 1024, or what "
                     "a Transformer's max_len leaves after the primer; a VAE: "
                     "its training window, data.seq_len); for a piano-roll "
                     "(JSB benchmark) model, frames (quarter notes).")
flags.DEFINE_float("temperature", 1.0, "Softmax temperature (> 0).")
flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0: all).")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass in (0, 1] (1: off).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_string("primer", None, "Optional MIDI file the samples continue.")
flags.DEFINE_integer("interpolate_steps", 0,
                     "Latent models: write this many samples along the "
                     "spherical interpolation between two random latents "
                     "(0: independent samples).")
flags.DEFINE_list("endpoints", None,
                  "VAE: two MIDI files A,B; --interpolate_steps points are "
                  "decoded from A's latent to B's.")
flags.DEFINE_string("style", None, "A style-conditioned model's style (one of "
                    "those in its bundle); none: unconditioned.")
flags.DEFINE_float("guidance", 1.0, "Classifier-free guidance scale with --style "
                   "or a conditioned VAE's --transfer (1: off; 0: unconditioned).")
flags.DEFINE_bool("style_prior", True, "A VAE with --style: draw z from the "
                  "style's region of the latent space (its bundle's style "
                  "latents) rather than N(0, I).")
flags.DEFINE_string("transfer", None, "A VAE: the MIDI file to move to --to_style.")
flags.DEFINE_string("to_style", None, "With --transfer: the target style.")
flags.DEFINE_string("from_style", None, "With --transfer: the piece's own style "
                    "(default: the style whose mean latent lies nearest).")
flags.DEFINE_float("strength", 1.0, "With --transfer: how far to move, 0..1 "
                   "(0: reconstruct the piece).")
flags.DEFINE_integer("windows", 1, "With --transfer: how many consecutive windows "
                     "of data.seq_len tokens of the piece to transfer, each "
                     "encoded, moved and decoded, then joined (1: the first).")
flags.DEFINE_bool("render_audio", False,
                  "Also write a WAV beside each MIDI sample, rendered by the "
                  "project's synthesizer.")
flags.mark_flags_as_required(["export", "output_dir"])


def sample(export_dir: str, output_dir: str, *, num_samples: int = 4,
           length: int | None = None, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, seed: int = 0, primer: str | None = None,
           interpolate_steps: int = 0,
           endpoints: str | Sequence[str] | None = None,
           render_audio: bool = False, style: str | None = None,
           guidance: float = 1.0, transfer: str | None = None,
           to_style: str | None = None, from_style: str | None = None,
           strength: float = 1.0, style_prior: bool = True,
           windows: int = 1) -> list[str]:
  """Writes samples and their PNGs; returns the MIDI (or WAV) paths.

  `length` None means 1024 tokens, or what a token Transformer's `max_len`
  leaves after the primer if fewer (a VAE: its `data.seq_len`). `style`,
  `guidance`: a style-conditioned token model's or VAE's (`style_prior`: a
  VAE's `--style` latents from the style's region); `transfer`, `to_style`,
  `from_style`, `strength`, `windows`: a VAE's style transfer (see the module
  docstring). `endpoints`
  (a VAE only): two MIDI paths, or one string "A.mid,B.mid". `render_audio`:
  a WAV beside each MIDI file (`sample_000.wav`).

  Raises:
    errors.UserError: a wrong argument, bundle or MIDI file (checked before
      anything is written).
  """
  _check_arguments(output_dir, num_samples=num_samples, length=length,
                   temperature=temperature, top_k=top_k, top_p=top_p,
                   interpolate_steps=interpolate_steps)
  if isinstance(endpoints, str):
    endpoints = endpoints.split(",")
  if endpoints is not None:
    endpoints = [p.strip() for p in endpoints if p.strip()]
    if len(endpoints) != 2:
      raise errors.UserError(f"--endpoints needs exactly two MIDI files (A.mid,B.mid), "
                       f"got {len(endpoints)}: {endpoints}")
    if interpolate_steps < 2:
      raise errors.UserError(f"--endpoints needs --interpolate_steps >= 2 (both ends "
                       f"included), got {interpolate_steps}")
  import jax

  from musegen_jax import checkpoint
  from musegen_jax import tasks
  from musegen_jax.data import pipeline

  # Read before the bundle (and before anything is written), so a wrong
  # file is told at once.
  if transfer is not None and not to_style:
    raise errors.UserError(f"--transfer={transfer}: name the target --to_style.")
  if transfer is None and (to_style or from_style):
    raise errors.UserError("--to_style/--from_style need --transfer=PIECE.mid.")
  if not 0.0 <= strength <= 1.0:
    raise errors.UserError(f"--strength={strength}: must be in [0, 1].")
  if windows < 1:
    raise errors.UserError(f"--windows={windows}: must be >= 1.")
  if windows != 1 and transfer is None:
    raise errors.UserError(f"--windows={windows} needs --transfer=PIECE.mid.")
  primer_ns = _read_piece("primer", primer) if primer else None
  transfer_ns = _read_piece("transfer", transfer) if transfer else None
  pieces = (None if endpoints is None else
            [_read_piece("endpoints", path) for path in endpoints])
  bundle = checkpoint.load_bundle(export_dir)
  kind = bundle.config.task
  if transfer is not None and kind != "vae":
    raise errors.UserError(f"--transfer needs a VAE bundle; {export_dir} holds a "
                           f"{kind!r} model.")
  if endpoints is not None and kind != "vae":
    raise errors.UserError(f"--endpoints needs a VAE bundle; {export_dir} holds a "
                     f"{kind!r} model.")
  representation = pipeline.representation_from_spec(bundle.representation)
  task = tasks.create_task(bundle.config, representation)
  title = f"seed {seed}, step {bundle.step}: "
  rng = jax.random.PRNGKey(seed)
  if kind == "gan":
    if guidance != 1.0:
      raise errors.UserError(f"--guidance={guidance}: a GAN has no classifier-free "
                             "guidance; a class-conditional one takes --style alone.")
    if style is not None:
      task.style_ids(style, 1)  # Unknown or unconditioned: told before anything is written.
    written = task.write_samples(
        bundle.params, rng, output_dir,
        num_samples=num_samples, interpolate_steps=interpolate_steps, title=title,
        style=style)
    return [w["wav"] for w in written]
  if kind == "vae" and transfer_ns is not None:
    # Its style names are checked before anything is written.
    task.transfer_latents(bundle.params, [transfer_ns], to_style, bundle.extras,
                          from_style, strength)
    paths, source_style = task.write_transfer(
        bundle.params, rng, output_dir, piece=transfer_ns, to_style=to_style,
        extras=bundle.extras, from_style=from_style, strength=strength,
        num_samples=num_samples, length=length, temperature=temperature,
        top_k=top_k, top_p=top_p, guidance=guidance, title=title, windows=windows)
    print(f"{transfer}: {source_style} -> {to_style} (strength {strength:g})")
    return _render_audio(paths) if render_audio else paths
  if kind == "vae":
    if primer:
      raise errors.UserError(
          f"--primer={primer}: a primer continues a language model; a VAE "
          "decodes from latents (use --endpoints to start from pieces).")
    if guidance != 1.0 and style is None:
      raise errors.UserError(f"--guidance={guidance}: name the --style to guide towards.")
    if style is not None:
      # Told before anything is written.
      task.check_sample_style(style, bundle.extras, guidance=guidance,
                              style_prior=style_prior)
    paths = task.write_samples(
        bundle.params, rng, output_dir, num_samples=num_samples,
        length=bundle.config.data.seq_len if length is None else length,
        temperature=temperature, top_k=top_k, top_p=top_p, endpoints=pieces,
        interpolate_steps=interpolate_steps, title=title, style=style,
        guidance=guidance, extras=bundle.extras, style_prior=style_prior)
    return _render_audio(paths) if render_audio else paths
  if interpolate_steps:
    raise errors.UserError(
        f"--interpolate_steps={interpolate_steps} needs a latent model (GAN, "
        f"VAE); {export_dir} holds a {kind!r} model.")
  styled = {}
  if style is not None or guidance != 1.0:
    if kind != "lm":
      raise errors.UserError(f"--style/--guidance need a style-conditioned token "
                             f"model; {export_dir} holds a {kind!r} model.")
    if style is None:
      raise errors.UserError(f"--guidance={guidance}: name the --style to guide towards.")
    task.style_token(style)  # An unknown style is told before anything is written.
    styled = {"style": style, "guidance": guidance}
  prime = None
  if primer_ns is not None:
    prime = pipeline.encode_with_boundary(representation, primer_ns)[:-1]
  # What a Transformer's fixed-size cache leaves after the primer.
  room = task.sample_room(prime) if kind == "lm" else None
  if length is None:
    length = DEFAULT_LENGTH if room is None else min(DEFAULT_LENGTH, room)
  if room is not None and length > room:
    raise errors.UserError(
        f"--length={length}: this model holds max_len={task.model.max_len} "
        f"positions and the primer takes {task.model.max_len - room}; "
        f"allowed: --length up to {room}.")
  paths = task.write_samples(
      bundle.params, rng, output_dir,
      num_samples=num_samples, length=length,
      temperature=temperature, top_k=top_k, top_p=top_p, primer=prime,
      title=title, **styled)
  return _render_audio(paths) if render_audio else paths


def _check_arguments(output_dir: str, *, num_samples: int, length: int | None,
                     temperature: float, top_k: int, top_p: float,
                     interpolate_steps: int) -> None:
  """One-line errors for the flags that need no bundle to check."""
  checks = [
      ("num_samples", num_samples, num_samples >= 1, "an integer >= 1"),
      ("length", length, length is None or length >= 1, "an integer >= 1"),
      ("temperature", temperature, temperature > 0, "a number > 0"),
      ("top_k", top_k, top_k >= 0, "an integer >= 0 (0: all tokens)"),
      ("top_p", top_p, 0 < top_p <= 1, "a number in (0, 1] (1: off)"),
      ("interpolate_steps", interpolate_steps, interpolate_steps >= 0,
       "an integer >= 0 (0: independent samples)"),
  ]
  for name, value, ok, allowed in checks:
    if not ok:
      raise errors.UserError(f"--{name}={value}: must be {allowed}.")
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise errors.ExistingOutputError(
        f"--output_dir={output_dir} is a file; name a directory.")


def _read_piece(flag: str, path: str):
  """The NoteSequence of a MIDI (or MusicXML, ABC) file the user named."""
  from musegen_jax.data import convert
  try:
    return convert.file_to_note_sequence(path)
  except convert.ConversionError as e:
    raise errors.UserError(
        f"--{flag}={e.path}: {e.reason} (expected a MIDI, MusicXML or ABC "
        "file with notes).") from e


def _render_audio(midi_paths: list[str]) -> list[str]:
  """Writes `X.wav` beside each `X.mid` with the additive synthesizer."""
  import note_seq

  from musegen_jax.data import audio
  from musegen_jax.data import synth

  for path in midi_paths:
    waveform = synth.render(note_seq.midi_file_to_note_sequence(path),
                            synth.DEFAULT_SAMPLE_RATE)
    audio.write_wav(os.path.splitext(path)[0] + ".wav", waveform,
                    synth.DEFAULT_SAMPLE_RATE)
  return midi_paths


def main(argv: list[str]) -> None:
  del argv  # cli.run refuses extra arguments.
  runtime.setup(compile_cache=True)
  paths = sample(FLAGS.export, FLAGS.output_dir, num_samples=FLAGS.num_samples,
                 length=FLAGS.length, temperature=FLAGS.temperature,
                 top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed,
                 primer=FLAGS.primer, interpolate_steps=FLAGS.interpolate_steps,
                 endpoints=FLAGS.endpoints, render_audio=FLAGS.render_audio,
                 style=FLAGS.style, guidance=FLAGS.guidance,
                 transfer=FLAGS.transfer, to_style=FLAGS.to_style,
                 from_style=FLAGS.from_style, strength=FLAGS.strength,
                 style_prior=FLAGS.style_prior, windows=FLAGS.windows)
  rendered = (" (and a WAV beside each MIDI file)"
              if FLAGS.render_audio and not paths[0].endswith(".wav") else "")
  print(f"Wrote {len(paths)} samples to {FLAGS.output_dir}{rendered}")


def run() -> None:
  runtime.setup()
  cli.run(main)


if __name__ == "__main__":
  run()

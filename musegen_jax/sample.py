r"""Samples from an export bundle: MIDI + piano rolls, or WAV + spectrograms.

    python -m musegen_jax.sample --export=exports/lstm --output_dir=samples \
        --num_samples=8 --length=1024 --temperature=1.0 --top_p=0.95 --seed=0
    python -m musegen_jax.sample --export=exports/lstm --output_dir=samples \
        --primer=my_tune.mid
    python -m musegen_jax.sample --export=exports/gan --output_dir=wavs \
        --num_samples=16 --seed=3
    python -m musegen_jax.sample --export=exports/gan --output_dir=walk \
        --interpolate_steps=8 --seed=3
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
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("export", None, "Bundle written by musegen_jax.export.")
flags.DEFINE_string("output_dir", None, "Where the MIDI and PNG files go.")
flags.DEFINE_integer("num_samples", 4, "Number of samples, drawn as one batch.")
flags.DEFINE_integer("length", None,
                     "Tokens to generate per sample (default: 1024; a VAE: "
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
flags.mark_flags_as_required(["export", "output_dir"])


def sample(export_dir: str, output_dir: str, *, num_samples: int = 4,
           length: int | None = None, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, seed: int = 0, primer: str | None = None,
           interpolate_steps: int = 0,
           endpoints: str | Sequence[str] | None = None) -> list[str]:
  """Writes samples and their PNGs; returns the MIDI (or WAV) paths.

  `length` None means 1024 tokens (a VAE: its `data.seq_len`). `endpoints`
  (a VAE only): two MIDI paths, or one string "A.mid,B.mid".
  """
  if isinstance(endpoints, str):
    endpoints = endpoints.split(",")
  if endpoints is not None:
    endpoints = [p.strip() for p in endpoints if p.strip()]
    if len(endpoints) != 2:
      raise ValueError(f"--endpoints needs exactly two MIDI files (A.mid,B.mid), "
                       f"got {len(endpoints)}: {endpoints}")
    if interpolate_steps < 2:
      raise ValueError(f"--endpoints needs --interpolate_steps >= 2 (both ends "
                       f"included), got {interpolate_steps}")
  if interpolate_steps < 0:
    raise ValueError(f"interpolate_steps={interpolate_steps} must be >= 0")
  if num_samples < 1 or (length is not None and length < 1):
    raise ValueError(f"num_samples={num_samples} and length={length} must be >= 1")
  if temperature <= 0 or not 0 < top_p <= 1 or top_k < 0:
    raise ValueError(f"temperature={temperature} must be > 0, top_p={top_p} in "
                     f"(0, 1], top_k={top_k} >= 0")
  import jax

  from musegen_jax import checkpoint
  from musegen_jax import tasks
  from musegen_jax.data import convert
  from musegen_jax.data import pipeline

  bundle = checkpoint.load_bundle(export_dir)
  kind = bundle.config.task
  if endpoints is not None and kind != "vae":
    raise ValueError(f"--endpoints needs a VAE bundle; {export_dir} holds a "
                     f"{kind!r} model.")
  representation = pipeline.representation_from_spec(bundle.representation)
  task = tasks.create_task(bundle.config, representation)
  title = f"seed {seed}, step {bundle.step}: "
  rng = jax.random.PRNGKey(seed)
  if kind == "gan":
    written = task.write_samples(
        bundle.params, rng, output_dir,
        num_samples=num_samples, interpolate_steps=interpolate_steps, title=title)
    return [w["wav"] for w in written]
  if kind == "vae":
    if primer:
      raise ValueError("--primer continues a language model; a VAE decodes "
                       "from latents (use --endpoints to start from pieces).")
    pieces = None
    if endpoints is not None:
      pieces = [convert.file_to_note_sequence(path) for path in endpoints]
    return task.write_samples(
        bundle.params, rng, output_dir, num_samples=num_samples,
        length=bundle.config.data.seq_len if length is None else length,
        temperature=temperature, top_k=top_k, top_p=top_p, endpoints=pieces,
        interpolate_steps=interpolate_steps, title=title)
  if interpolate_steps:
    raise ValueError(f"--interpolate_steps needs a latent model; {export_dir} "
                     f"holds a {kind!r} model.")
  prime = None
  if primer:
    prime = pipeline.encode_with_boundary(
        representation, convert.file_to_note_sequence(primer))[:-1]
  return task.write_samples(
      bundle.params, rng, output_dir,
      num_samples=num_samples, length=1024 if length is None else length,
      temperature=temperature, top_k=top_k, top_p=top_p, primer=prime,
      title=title)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from musegen_jax import compile_cache  # pylint: disable=import-outside-toplevel
  compile_cache.enable()
  paths = sample(FLAGS.export, FLAGS.output_dir, num_samples=FLAGS.num_samples,
                 length=FLAGS.length, temperature=FLAGS.temperature,
                 top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed,
                 primer=FLAGS.primer, interpolate_steps=FLAGS.interpolate_steps,
                 endpoints=FLAGS.endpoints)
  print(f"Wrote {len(paths)} samples to {FLAGS.output_dir}")


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()

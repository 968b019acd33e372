r"""Exports a training run's parameters into a self-contained sampling bundle.

    python -m musegen_jax.export --workdir=runs/lstm --output=exports/lstm
    python -m musegen_jax.export --workdir=runs/lstm --output=exports/lstm_best \
        --checkpoint=best

    python -m musegen_jax.export --workdir=runs/lstm --output=exports/lstm_hub \
        --format=safetensors

The bundle is all `musegen_jax.sample` needs; the run can be deleted. It
holds the parameters (`--format`: "orbax" arrays under params/,
"safetensors": model.safetensors with one tensor per parameter path, or
"both", the default), config.json, representation.json, a model card
(README.md: the Hugging Face Hub folder layout, with the run's evaluations)
and bundle.json (formats, sha256 of every file).
"""

from __future__ import annotations

import json
import os

from absl import flags

from musegen_jax import cli
from musegen_jax import errors
from musegen_jax import runtime

# Before note_seq is imported: see runtime.setup_if_run_as_command.
runtime.setup_if_run_as_command(__name__)

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The training run's workdir.")
flags.DEFINE_string("output", None, "Directory for the bundle.")
flags.DEFINE_string("checkpoint", "latest",
                    "Which checkpoint: 'latest', 'best' (lowest valid loss) "
                    "or a step number.")
flags.DEFINE_string("format", "both",
                    "Parameter format: 'orbax', 'safetensors' (Hub layout: "
                    "model.safetensors + README.md model card) or 'both'.")
flags.mark_flags_as_required(["workdir", "output"])


def export(workdir: str, output: str, which: str = "latest",
           export_format: str = "both") -> str:
  """Writes the bundle of checkpoint `which` of `workdir` into `output`.

  `export_format`: "orbax", "safetensors" or "both" (`--format`).

  Raises:
    errors.UserError: a wrong `export_format`, `workdir` is not a run with a
      checkpoint, `which` names none of its checkpoints, or `output` already
      holds a bundle or is a file.
  """
  from musegen_jax import checkpoint

  checkpoint.export_formats(export_format)  # Checked before anything is read.
  which = str(which)
  if which not in ("latest", "best") and not which.isdigit():
    raise errors.UserError(f"--checkpoint={which!r}: use 'latest', 'best' or a "
                           "saved step number.")
  import jax
  import ml_collections
  import orbax.checkpoint as ocp

  from musegen_jax import hub
  from musegen_jax import parallel
  from musegen_jax import workdir as workdir_lib
  from musegen_jax import tasks
  from musegen_jax import train
  from musegen_jax.data import pipeline

  checkpoint.check_bundle_output(output)
  layout = workdir_lib.Layout(workdir)
  if not os.path.exists(layout.config):
    raise errors.MissingInputError(
        f"--workdir={workdir} is not a training workdir (no config.json).")
  with open(layout.config, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(layout.representation, encoding="utf-8") as f:
    spec = json.load(f)
  task = tasks.create_task(config, pipeline.representation_from_spec(spec))

  checkpoints = layout.checkpoints
  if not layout.has_checkpoint():
    raise errors.MissingInputError(
        f"--workdir={workdir}: its checkpoints/ holds no checkpoint yet.")
  manager = checkpoint.create_manager(checkpoints,
                                      keep=config.keep_checkpoints,
                                      async_save=False)
  steps = manager.all_steps()
  if which == "latest":
    step = manager.latest_step()
  elif which == "best":
    step = checkpoint.best_step(manager)
    if step is None:
      raise errors.UserError(f"--checkpoint=best: no checkpoint of {workdir} "
                             "has a valid loss yet; use --checkpoint=latest.")
  elif which.isdigit() and int(which) in steps:
    step = int(which)
  else:
    raise errors.UserError(f"--checkpoint={which!r}: use 'latest', 'best' or "
                           f"one of the saved steps {sorted(steps)}.")

  # One device: the parameters are gathered whole (however the run's mesh
  # split them) and written from the host.
  mesh = parallel.create_mesh(jax.devices()[:1])
  abstract = train.abstract_train_state(task, mesh)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))
  metrics = manager.metrics(step) or {}
  manager.close()
  params = task.eval_params(restored["state"])
  command = (f"python -m musegen_jax.export --workdir={workdir} "
             f"--output={output} --checkpoint={which} --format={export_format}")
  card = hub.model_card(
      config, spec, step=step, params=params,
      formats=checkpoint.export_formats(export_format),
      evaluations=hub.read_evaluations(layout.train_log, up_to_step=step),
      checkpoint_metrics=metrics, export_command=command,
      train_commands=_train_commands(layout.commands))
  # What sampling needs from the data (the VAE's style latents), computed
  # now: the bundle must not need the dataset.
  bundle_extras = getattr(task, "bundle_extras", None)
  extras = (bundle_extras(params, train.resolve_data_dir(config))
            if bundle_extras is not None else None)
  return checkpoint.export_bundle(output, params=params, config=config,
                                  representation=spec, step=step,
                                  export_format=export_format, model_card=card,
                                  extras=extras)


def _train_commands(path: str) -> list[str]:
  """The run's recorded launch commands (none for runs made before they
  were recorded, or through the Python API)."""
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [line.rstrip("\n") for line in f if line.strip()]


def main(argv: list[str]) -> None:
  del argv  # cli.run refuses extra arguments.
  path = export(FLAGS.workdir, FLAGS.output, FLAGS.checkpoint, FLAGS.format)
  print(f"Exported {FLAGS.workdir} to {path}")


def run() -> None:
  runtime.setup()
  cli.run(main)


if __name__ == "__main__":
  run()

r"""Evaluates an export bundle on a split of its dataset and prints one JSON line.

    python -m musegen_jax.evaluate --export=exports/gan --split=valid
    python -m musegen_jax.evaluate --export=exports/lstm --split=test

What is measured is the task's own evaluation, the one training runs every
eval period: the GAN's Frechet distance between log-mel statistics of
generated and real clips of the split; a token model's loss, accuracy and
perplexity over the split; the VAE's negative ELBO, reconstruction and KL
(nats per sequence), reconstruction per token and accuracy. Choose models on valid, never on test.
"""

from __future__ import annotations

import json
from typing import Any

from absl import app
from absl import flags

def evaluate(export_dir: str, *, split: str = "valid", data_dir: str | None = None,
             num_batches: int | None = None) -> dict[str, Any]:
  """The task's eval metrics of bundle `export_dir` on `split`."""
  import jax

  from musegen_jax import checkpoint
  from musegen_jax import parallel
  from musegen_jax import tasks
  from musegen_jax import train

  bundle = checkpoint.load_bundle(export_dir)
  config = bundle.config.copy_and_resolve_references()
  if data_dir:
    config.data.dir = data_dir
  if num_batches is not None:
    config.num_eval_batches = num_batches
  data_dir = train.resolve_data_dir(config)
  task = tasks.create_task(config, train.load_representation(config, data_dir))
  data_dir = task.prepare_data(data_dir)
  eval_data = task.eval_data(data_dir, split)
  # The largest device count that divides the batch: the evaluating machine
  # may have other devices than the training one.
  count = max(n for n in range(1, jax.device_count() + 1)
              if config.batch_size % n == 0)
  mesh = parallel.create_mesh(jax.devices()[:count])
  _, eval_step = train.jit_steps(task, mesh)
  metrics = train.evaluate(eval_step, task, bundle.params, eval_data, mesh,
                           config.num_eval_batches)
  return {"export": export_dir, "step": bundle.step, "split": split,
          "task": config.task, "model": config.model.name, **metrics}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  print(json.dumps(evaluate(FLAGS.export, split=FLAGS.split,
                            data_dir=FLAGS.data_dir, num_batches=FLAGS.num_batches)))


def run() -> None:
  # Flags are defined here, not at import, so that importing this module
  # next to sample.py (both have --export) does not clash.
  flags.DEFINE_string("export", None, "Bundle written by musegen_jax.export.")
  flags.DEFINE_enum("split", "valid", ["train", "valid", "test"],
                    "Split to evaluate on.")
  flags.DEFINE_string("data_dir", None,
                      "Prepared dataset (default: the one the model was trained on).")
  flags.DEFINE_integer("num_batches", None,
                       "Eval batches (-1: the whole split; the GAN compares this "
                       "many batches of generated clips with as many real ones). "
                       "Default: the training config's num_eval_batches.")
  flags.mark_flags_as_required(["export"])
  app.run(main)


if __name__ == "__main__":
  run()

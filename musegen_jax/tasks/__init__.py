"""Training objectives, one file each.

A task module has `check_config(config)` (out-of-range values of its own
keys) and a task class built as `Task(config, representation)` with:

- `init_state(rng)`: the whole train state, one pytree with `step` and
  `skipped_updates` (TrainState for one network; the GAN's holds both
  networks, both optimizer states and the EMA generator). Its parameters
  are still boxed with their logical axis names (`nn.Partitioned`): the loop
  derives the fsdp shardings from them, then unboxes
  (`train.create_train_state`);
- `train_step(state, batch, rng, reducer=parallel.IDENTITY) -> (state,
  metrics)`, with a `nonfinite` metric; the step sums or averages gradients
  and metrics over devices through `reducer` (`parallel.reduce`: the
  identity under jit, a reduction over the device axis otherwise).
  `eval_step(params, batch) ->
  sums` (the loop adds them to the running totals in the same compiled
  program: `train.accumulating`), `summarize(totals, eval_data)`;
- `eval_params(state)`: the parameters evaluation, samples and export use;
- `prepare_data(data_dir)`, `create_train_dataset(data_dir)` (batches may
  carry "bad_records", which the loop counts and never sends to devices),
  `eval_data(data_dir, split)`, `eval_batches(eval_data)`;
- `write_step_samples(params, rng, directory, title)`: the loop's periodic
  samples, as [{"image": png, "wav" | "midi": path}];
- `batch_spec(split)`: shapes and dtypes of one global batch of "train" or
  "eval" (`jax.ShapeDtypeStruct`s), and `sample_program(n)`: the sampling
  loop of `config.sample` for n samples as `(fn, inputs)`, called
  `fn(params, rng, *inputs)`. With them `aot.py` compiles every program from
  shapes alone;
- `valid_metric` (picks the best checkpoint; lower is better),
  `progress_keys` (shown on the progress bar) and `learning_rate_fn` (or
  None); optionally `progress_valid_keys` (the last eval's figures shown
  beside them) and `curve_keys` (valid figures the loop plots against step
  and wall time in WORKDIR/learning_curve.png after every eval).

The module may also give `evaluate_num_batches(config)`: the eval batches
`python -m musegen_jax.evaluate` uses when not told (the GAN's default
reaches 512 clips).

The loop (`train.py`) uses only these. A task whose eval scores predictive
distributions may also give `eval_log_probs(params, batch)` and
`log_prob_sums(log_probs, batch) -> sums` (with `eval_step` their
composition): `evaluate` then scores ensembles, the members' probabilities
averaged (the token and piano-roll tasks).
"""

from __future__ import annotations

import importlib
from typing import Any

from ml_collections import config_dict

# config.task -> (module, class).
TASKS = {"lm": ("musegen_jax.tasks.lm", "LanguageModelTask"),
         "pianoroll": ("musegen_jax.tasks.pianoroll", "PianorollTask"),
         "gan": ("musegen_jax.tasks.gan", "GANTask"),
         "vae": ("musegen_jax.tasks.vae", "VAETask")}


def _lookup(name: str) -> tuple[Any, str]:
  if name not in TASKS:
    raise ValueError(f"config.task={name!r}; known tasks: {sorted(TASKS)}")
  module, cls = TASKS[name]
  return importlib.import_module(module), cls


def fill_defaults(config: config_dict.ConfigDict) -> None:
  """Adds the task's keys that `config` lacks (`CONFIG_DEFAULTS` of the task
  module: keys added after bundles were exported), so older bundles load."""
  module, _ = _lookup(config.task)
  for key, value in getattr(module, "CONFIG_DEFAULTS", {}).items():
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
      node = node[name]
    if leaf not in node:
      with node.unlocked():
        node[leaf] = value


def check_config(config: config_dict.ConfigDict) -> None:
  """Checks the task's own config keys before anything is compiled."""
  module, _ = _lookup(config.task)
  fill_defaults(config)
  module.check_config(config)


def create_task(config: config_dict.ConfigDict, representation: Any):
  """Builds the task named by `config.task`."""
  module, cls = _lookup(config.task)
  fill_defaults(config)
  return getattr(module, cls)(config, representation)


def evaluate_num_batches(config: config_dict.ConfigDict) -> int:
  """Eval batches for `evaluate` without --num_batches: the task module's
  `evaluate_num_batches(config)`, else `config.num_eval_batches`."""
  module, _ = _lookup(config.task)
  chooser = getattr(module, "evaluate_num_batches", None)
  return chooser(config) if chooser else config.num_eval_batches

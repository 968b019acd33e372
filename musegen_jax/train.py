"""The task-agnostic training loop: init or resume, step, eval, log, checkpoint.

`train_and_evaluate(config, workdir)` is the whole job. The loop never asks
which model it trains: the task (`musegen_jax/tasks/`) owns the loss and the
compiled steps, the pipeline (`data/pipeline.py`) the batches. Each step's key
is the config seed folded with the step number, and the data iterator's
position is in every checkpoint, so a resumed run repeats an uninterrupted
one exactly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib.image as plt_image
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from ml_collections import config_dict

from musegen_jax import checkpoint
from musegen_jax import errors
from musegen_jax import parallel
from musegen_jax.parallel import pmap
from musegen_jax import plots
from musegen_jax import progress as progress_lib
from musegen_jax import tasks
from musegen_jax import warm_start
from musegen_jax import workdir as workdir_lib
from musegen_jax.data import pipeline
from musegen_jax.data import shards
from musegen_jax import metrics
from musegen_jax.metrics import MetricWriter
from musegen_jax.tasks import state as state_lib

# What a NaN/Inf loss or gradient does: stop with an error, or skip the update.
NONFINITE_MODES = ("stop", "skip")


def check_config(config: config_dict.ConfigDict,
                 num_devices: int | None = None) -> None:
  """Rejects out-of-range values before anything is compiled.

  The keys every config has are checked here, the task's own by
  `tasks.check_config`; the batch and mesh against `num_devices` (default:
  all devices). Raises `errors.UserError` naming the key, the value and what
  is allowed.
  """
  with errors.user_input():
    _check_config(config, num_devices)


def _check_config(config: config_dict.ConfigDict, num_devices: int | None) -> None:
  positive = {"batch_size": config.batch_size,
              "num_train_steps": config.num_train_steps,
              "log_every_steps": config.log_every_steps,
              "eval_every_steps": config.eval_every_steps,
              "checkpoint_every_steps": config.checkpoint_every_steps,
              "keep_checkpoints": config.keep_checkpoints}
  for key, value in positive.items():
    if not value > 0:
      raise ValueError(f"config.{key}={value!r} must be > 0")
  non_negative = {"data.num_workers": config.data.num_workers,
                  "sample_every_steps": config.sample_every_steps,
                  "checkpoint_every_minutes": config.get(
                      "checkpoint_every_minutes", 0.0)}
  for key, value in non_negative.items():
    if value < 0:
      raise ValueError(f"config.{key}={value!r} must be >= 0")
  if config.data.bad_records not in pipeline.BAD_RECORD_MODES:
    raise ValueError(f"config.data.bad_records={config.data.bad_records!r}; "
                     f"allowed: {list(pipeline.BAD_RECORD_MODES)}")
  metrics.parse_log_to(config.log_to)
  if config.nonfinite not in NONFINITE_MODES:
    raise ValueError(f"config.nonfinite={config.nonfinite!r}; allowed: "
                     f"{list(NONFINITE_MODES)}")
  warm_start.check_config(config)
  tasks.check_config(config)
  parallel.check_parallelism(config.parallelism, config.batch_size,
                             num_devices, fsdp=config.mesh.fsdp,
                             grad_accum_steps=config.grad_accum_steps)
  parallel.axis_rules(config.logical_axis_rules)


def resolve_data_dir(config: config_dict.ConfigDict) -> str:
  """The prepared dataset to train on; the bundled chorales by default.

  Raises:
    errors.MissingInputError: `config.data.dir` is not a prepared dataset.
  """
  if config.data.dir:
    from musegen_jax.data import poly_corpus  # pylint: disable=import-outside-toplevel
    if config.task == "pianoroll" and poly_corpus.is_frames_file(config.data.dir):
      # A polyphonic benchmark file as distributed (.pickle, .mat), read as is.
      if not os.path.isfile(config.data.dir):
        raise errors.MissingInputError(f"config.data.dir={config.data.dir}: no such file")
      return config.data.dir
    if not os.path.isfile(os.path.join(config.data.dir, shards.METADATA_FILE)):
      raise errors.MissingInputError(
          f"config.data.dir={config.data.dir}: not a prepared dataset (no "
          f"{shards.METADATA_FILE}); write one with python -m "
          f"musegen_jax.prepare --input=FOLDER_OR_FILE --output={config.data.dir}")
    return config.data.dir
  from musegen_jax.prepare import ensure_default_dataset
  return ensure_default_dataset()


def load_representation(config: config_dict.ConfigDict, data_dir: str):
  """The representation `config.data.representation` names.

  Its settings, where it has any, are the config's `data.<name>` section
  (e.g. `data.audio`: sample rate and synthesizer).
  """
  name = config.data.representation
  settings = config.data.get(name)
  return pipeline.load_representation(
      name, data_dir, settings.to_dict() if settings is not None else None)


def create_mesh(config: config_dict.ConfigDict,
                devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
  """The (data, fsdp) mesh of `config.mesh` over `devices` (default: all).

  Under pmap the mesh (fsdp = 1) places the state between steps: for
  evaluation, samples and checkpoints.
  """
  return parallel.create_mesh(devices, fsdp=config.mesh.fsdp)


def state_shardings(task, mesh) -> Any:
  """Where each leaf of the task's train state lives on `mesh`.

  From the logical axis names of `task.init_state`'s parameters (abstract:
  nothing is computed) and `task.config.logical_axis_rules`.
  """
  boxed = jax.eval_shape(task.init_state, jax.random.PRNGKey(0))
  # Configs exported before logical axis rules existed replicate everything.
  rules = task.config.get("logical_axis_rules", ())
  return parallel.state_shardings(boxed, mesh, rules)


def create_train_state(task, config: config_dict.ConfigDict, mesh,
                       rng: jax.Array) -> Any:
  """The task's initial state (`task.init_state`), unboxed and laid out on `mesh`.

  The initializer is jitted with the state's shardings as its outputs, so
  fsdp-split parameters are never whole on one device. It runs once, and is
  compiled with `state_lib.initializer_compiler_options()`; jit takes compiler
  options only at the top level, so call this outside any trace (inside
  one, `abstract_train_state` gives the state's shapes).
  """
  del config  # The task holds it.
  init = lambda rng: state_lib.unbox(task.init_state(rng))
  return jax.jit(init, out_shardings=state_shardings(task, mesh),
                 compiler_options=state_lib.initializer_compiler_options())(rng)


def abstract_train_state(task, mesh) -> Any:
  """`create_train_state`'s result as `jax.ShapeDtypeStruct`s with their
  shardings on `mesh`, computing nothing: what a restore needs."""
  init = lambda rng: state_lib.unbox(task.init_state(rng))
  return checkpoint.with_sharding(jax.eval_shape(init, jax.random.PRNGKey(0)),
                                  state_shardings(task, mesh))


def jit_steps(task, mesh, shardings: Any = None):
  """The task's train and eval steps, jitted over `mesh`.

  The state keeps `shardings` (default: `state_shardings(task, mesh)`) and is
  donated (updated in place); batches are split over the data and fsdp axes.
  """
  state_sharding = state_shardings(task, mesh) if shardings is None else shardings
  data_sharding = parallel.batch_sharding(mesh)

  def step(state, batch, rng):
    with parallel.tracing_over(mesh):
      return task.train_step(state, batch, rng)

  train_step = jax.jit(step,
                       in_shardings=(state_sharding, data_sharding, None),
                       out_shardings=(state_sharding, None), donate_argnums=0)
  return train_step, accumulating(task.eval_step)


def accumulating(sums_fn):
  """`sums_fn(*args) -> sums` as one compiled `step(totals, *args) -> totals + sums`.

  `totals` is None on the first call. Each call needs the previous one's
  totals, so the batches' programs run one after another. Independent
  programs with collectives, dispatched together, can deadlock XLA's CPU
  collectives when there are several CPU devices: a rendezvous not every
  device thread reaches, which aborts the process after 40 s.
  """
  add = jax.jit(lambda totals, *args: jax.tree.map(jnp.add, totals, sums_fn(*args)))

  def step(totals, *args):
    if totals is None:
      totals = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                            jax.eval_shape(sums_fn, *args))
    return add(totals, *args)

  return step


_REPEAT_SIGNAL_GRACE_S = 2.0


@contextlib.contextmanager
def _stop_on_signals():
  """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""
  stop = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield stop
    return
  previous = {}
  first_at = []

  def handler(signum, frame):
    del frame
    # A second Ctrl-C stops at once, unless it comes with the first: wrappers
    # such as `timeout` and schedulers deliver one signal twice.
    if first_at and time.monotonic() - first_at[0] > _REPEAT_SIGNAL_GRACE_S:
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
    if not first_at:
      first_at.append(time.monotonic())
      logging.warning("Signal %d: saving a checkpoint after this step "
                      "(signal again to stop at once).", signum)
    stop.set()

  for signum in (signal.SIGINT, signal.SIGTERM):
    previous[signum] = signal.signal(signum, handler)
  try:
    yield stop
  finally:
    for signum, old in previous.items():
      signal.signal(signum, old)


def evaluate(eval_step, task, params, eval_data, mesh,
             num_batches: int) -> dict[str, float]:
  """Runs `eval_step` over the task's eval batches and summarizes the totals.

  Args:
    eval_step: `accumulating(task.eval_step)`, as `jit_steps` gives it.
    task: gives `eval_batches(eval_data)` and `summarize(totals, eval_data)`.
    params: what `task.eval_params(state)` returned.
    eval_data: what `task.eval_data(...)` returned.
    mesh: the device mesh batches are placed on.
    num_batches: stop after this many batches (-1: all).
  """
  totals = None
  for i, batch in enumerate(task.eval_batches(eval_data)):
    if 0 <= num_batches <= i:
      break
    totals = eval_step(totals, params, parallel.global_batch(batch, mesh))
  return task.summarize(jax.device_get(totals), eval_data)


def _write_run_files(workdir: str, config: config_dict.ConfigDict,
                     representation_spec: dict[str, Any]) -> None:
  """Records the config and representation that export needs."""
  layout = workdir_lib.Layout(workdir)
  for path, obj in ((layout.config, config.to_dict()),
                    (layout.representation, representation_spec)):
    shards.write_json_atomic(path, obj)


def _write_samples(task, params, rng, workdir: str, step: int,
                   writer: MetricWriter, is_chief: bool) -> None:
  """Writes samples to WORKDIR/samples/STEP and their media to TensorBoard."""
  directory = workdir_lib.Layout(workdir).samples(step) if is_chief else None
  samples = task.write_step_samples(params, rng, directory, title=f"step {step}: ")
  for i, sample in enumerate(samples):
    # One tag per kind, so TensorBoard's audio and image tabs both list them.
    if "image" in sample:
      image = plt_image.imread(sample["image"])
      kind = "spectrogram" if "wav" in sample else "pianoroll"
      writer.write_image(step, f"samples/{kind}/{i}",
                         (image[..., :3] * 255).astype(np.uint8))
    if "wav" in sample:
      writer.write_audio(step, f"samples/audio/{i}", sample["wav"])


def _now() -> float:
  """The host clock of time-based checkpoints (seconds; tests replace it)."""
  return time.monotonic()


def _agree(stop: threading.Event, save_due: bool, manager,
           step: int) -> tuple[bool, bool]:
  """Whether every process stops (and saves) after `step`, and whether they
  all save because `checkpoint_every_minutes` passed.

  A signal may reach only some hosts of a pod, so with several processes the
  flags are gathered (one tiny collective per step) and any one stops all;
  JAX's preemption notice (`jax.distributed`) is honoured through orbax.
  The time to save is process 0's clock's, sent in the same gather: hosts'
  clocks and start times differ, and a save is a collective.
  """
  if jax.process_count() == 1:
    return stop.is_set(), save_due
  flags = multihost_utils.process_allgather(np.asarray([stop.is_set(), save_due]))
  stopping = bool(np.any(flags[:, 0])) or manager.reached_preemption(step)
  return stopping, bool(flags[0, 1])


def _sum_over_processes(values: np.ndarray) -> np.ndarray:
  """Elementwise sum of a host array over all processes (itself with one)."""
  if jax.process_count() == 1:
    return values
  return np.sum(multihost_utils.process_allgather(values), axis=0)


def _check_finite(rows: list[tuple[int, dict[str, Any]]], mode: str,
                  manager) -> None:
  """With `nonfinite="stop"`, raises at the first step whose update was skipped."""
  bad = [step for step, metrics in rows if metrics["nonfinite"]]
  if bad and mode == "stop":
    manager.wait_until_finished()
    raise FloatingPointError(
        f"Non-finite loss or gradient at step {bad[0]} (update not applied). "
        f"The last good checkpoint is step {manager.latest_step()} in "
        f"{manager.directory}. Lower the learning rate, check the data, or "
        "set --config.nonfinite=skip to skip such updates and count them.")


def _format(values: dict[str, float]) -> str:
  return ", ".join(f"{k} {v:.4g}" for k, v in values.items())


def train_and_evaluate(config: config_dict.ConfigDict, workdir: str, *,
                       stop_at_step: int | None = None,
                       allow_config_change: bool = False,
                       config_file: str | None = None,
                       command: str | None = None) -> Any:
  """Trains `config` in `workdir`, resuming from its newest checkpoint.

  Args:
    config: a config from `configs/`.
    workdir: checkpoints, TensorBoard events, `train_log.jsonl` and the
      config go here.
    stop_at_step: stop (with a checkpoint) at this step instead of
      `num_train_steps`, as a preemption would; the schedule is unchanged.
    allow_config_change: resume even if the task, model, data dir or
      representation differ from the workdir's earlier run.
    config_file: the --config the user gave (with its variant), named in the
      hint a run longer than a day prints.
    command: the command line that launched this, appended to
      WORKDIR/commands.txt once the workdir is checked (export's model card
      shows each launch).

  Returns:
    The final train state.
  """
  check_config(config)
  # A wrong data dir is told before the workdir is made; keys that follow
  # from the data (the classifier's styles) are filled in before the config
  # is compared with the workdir's and written.
  tasks.configure_from_data(config, resolve_data_dir(config))
  workdir = os.path.abspath(workdir)
  # Fine-tuning starts from the bundle only while the run has no checkpoint
  # of its own; once it has saved, it resumes from those.
  bundle = None
  if config.get("init_from", "") and not workdir_lib.Layout(workdir).has_checkpoint():
    bundle = warm_start.load_source(config)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise errors.ExistingOutputError(
        f"--workdir={workdir} is a file; name a directory (a new one, or a "
        "run's workdir to resume it).")
  os.makedirs(workdir, exist_ok=True)
  hold = (workdir_lib.hold(workdir) if jax.process_index() == 0
          else contextlib.nullcontext())
  with hold:
    if workdir_lib.Layout(workdir).has_checkpoint():
      workdir_lib.check_config(workdir, config, allow_change=allow_config_change)
      warm_start.check_resume(workdir_lib.Layout(workdir).config, config)
    if command and jax.process_index() == 0:
      with open(workdir_lib.Layout(workdir).commands, "a", encoding="utf-8") as f:
        f.write(command.replace("\n", " ") + "\n")
    return _train(config, workdir, stop_at_step, config_file, bundle)


class _DispatchBound:
  """Keeps at most 2 steps dispatched but not finished; 1 once steps are slow.

  While steps are quick the loop waits for step k-1 right after dispatching
  step k: the devices have the next step queued while the host waits, so
  they never idle, and a signal waits for at most one more quick step. Once
  a step takes over `SLOW_STEP_SECONDS` (a big config on a CPU: 47 s) the
  loop waits for step k itself: the host's few milliseconds of dispatch are
  nothing beside the step, and a signal then waits only for the step
  running, plus the save. (An unbounded queue ran 30-50 steps ahead of a
  slow CPU, holding a batch per step, and a Ctrl-C waited for all of them.)
  """

  MAX_STEPS_IN_FLIGHT = 2
  SLOW_STEP_SECONDS = 1.0

  def __init__(self, progress: progress_lib.Progress):
    self._progress = progress
    self._slow = True  # Until a step is timed: the first one compiles.
    self._last: tuple[int, float] | None = None

  def wait(self, pending: list[tuple[int, Any]]) -> None:
    """Blocks until all but the allowed number of `pending` steps finished."""
    allowed = 1 if self._slow else self.MAX_STEPS_IN_FLIGHT
    if len(pending) < allowed:
      return
    step, metrics = pending[-allowed]
    jax.block_until_ready(metrics)
    self.finished(step)

  def finished(self, step: int) -> None:
    """Steps up to `step` are known to have finished."""
    now = time.perf_counter()
    if self._last is not None and step > self._last[0]:
      seconds = (now - self._last[1]) / (step - self._last[0])
      self._slow = seconds > self.SLOW_STEP_SECONDS
    self._last = (step, now)
    self._progress.finished(step)


def _train(config: config_dict.ConfigDict, workdir: str,
           stop_at_step: int | None, config_file: str | None,
           bundle: checkpoint.Bundle | None = None) -> Any:
  """The loop of `train_and_evaluate`, once the workdir is checked and held.

  `bundle` (`warm_start.load_source`) starts the parameters when the
  workdir has no checkpoint to restore.
  """
  mesh = create_mesh(config)
  use_pmap = config.parallelism == "pmap"

  data_dir = resolve_data_dir(config)
  representation = load_representation(config, data_dir)
  task = tasks.create_task(config, representation)
  data_dir = task.prepare_data(data_dir)
  is_chief = jax.process_index() == 0
  if is_chief:
    _write_run_files(workdir, config, pipeline.representation_spec(representation))

  rng = jax.random.PRNGKey(config.seed)
  init_rng, step_rng, sample_rng = jax.random.split(rng, 3)
  shardings = state_shardings(task, mesh)
  state = create_train_state(task, config, mesh, init_rng)
  train_iter = iter(task.create_train_dataset(data_dir))

  manager = checkpoint.create_manager(workdir_lib.Layout(workdir).checkpoints,
                                      keep=config.keep_checkpoints)
  restored = checkpoint.restore_latest(
      manager, checkpoint.with_sharding(jax.eval_shape(lambda: state), shardings),
      train_iter)
  start_step = 0
  say = print if is_chief else (lambda *args, **kwargs: None)
  num_params = sum(x.size for x in jax.tree.leaves(task.eval_params(state)))
  device = f"{jax.device_count()} {jax.default_backend()} device(s)"
  say(f"{config.task}/{config.model.name}: {num_params:,} parameters, "
      f"{config.data.representation} data from {data_dir}, {device}", flush=True)
  if restored is not None:
    state, start_step = restored
    say(f"Resumed from step {start_step} in {workdir}", flush=True)
  elif bundle is not None:
    state, report = warm_start.apply(state, bundle, config)
    say(report.summary(config.init_from), flush=True)

  if use_pmap:
    # Replicated on the local devices while training; `on_mesh` puts one copy
    # back on the mesh for evaluation, samples and checkpoints.
    train_step, eval_step = pmap.train_step(task), jit_steps(task, mesh, shardings)[1]
    state = parallel.replicate(state)
    on_mesh = lambda state: parallel.unreplicate(state, mesh)
    place_batch = parallel.device_batch
  else:
    train_step, eval_step = jit_steps(task, mesh, shardings)
    on_mesh = lambda state: state
    place_batch = lambda batch: parallel.global_batch(batch, mesh)
  learning_rate_fn = getattr(task, "learning_rate_fn", None)
  eval_data = task.eval_data(data_dir)

  writer = MetricWriter(workdir, enabled=is_chief, resume_step=start_step,
                        log_to=config.log_to, run_config=config.to_dict())
  last_step = config.num_train_steps if stop_at_step is None else min(
      stop_at_step, config.num_train_steps)
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  bad_records: list[int] = []  # Per pending step, this process's count.
  bad_records_total = 0  # Since this launch, all processes.
  valid_shown = {}  # The last eval's `task.progress_valid_keys`, on the bar.
  step = start_step
  started = time.perf_counter()
  stopped = False
  last_samples = None
  progress = progress_lib.Progress(
      total=config.num_train_steps, initial=start_step, enabled=is_chief,
      device=device, config_file=config_file)
  dispatch = _DispatchBound(progress)
  save_seconds = 60.0 * config.get("checkpoint_every_minutes", 0.0)
  last_save = _now()
  try:
    with _stop_on_signals() as stop:
      t_log = time.perf_counter()
      while step < last_step:
        host_batch = next(train_iter)
        # Bad records skipped (replaced) by the pipeline: counted on the
        # host, never sent to the devices.
        bad_records.append(int(np.sum(host_batch.pop("bad_records", 0))))
        batch = place_batch(host_batch)
        state, metrics = train_step(state, batch, step_rng)
        if use_pmap:
          metrics = parallel.unreplicate(metrics)
        step += 1
        pending.append((step, metrics))
        dispatch.wait(pending)

        # Every process acts on the agreed decision, never on its own flag:
        # a signal landing between the agreement and the save would
        # otherwise make one process save (a collective) alone.
        save_due = save_seconds > 0 and _now() - last_save >= save_seconds
        stopping, time_to_save = _agree(stop, save_due, manager, step)
        do_eval = step % config.eval_every_steps == 0 or step == config.num_train_steps
        do_save = (step % config.checkpoint_every_steps == 0 or step == last_step
                   or stopping or do_eval or time_to_save)
        # Metrics are fetched (a host sync) only at log, eval and save steps;
        # a checkpoint is only written after its steps were checked finite.
        if step % config.log_every_steps == 0 or do_save:
          rows = jax.device_get(pending)
          pending = []
          dispatch.finished(step)
          counts = _sum_over_processes(np.asarray(bad_records, np.int64))
          bad_records = []
          bad_records_total += int(counts.sum())
          for (_, row), count in zip(rows, counts):
            row["bad_records"] = int(count)
          _check_finite(rows, config.nonfinite, manager)
          now = time.perf_counter()
          steps_per_sec = len(rows) / max(now - t_log, 1e-9)
          t_log = now
          writer.write_steps("train", rows)
          summary = {k: float(np.mean([m[k] for _, m in rows])) for k in rows[0][1]}
          if learning_rate_fn is not None:
            summary["learning_rate"] = float(learning_rate_fn(step - 1))
          summary.update(bad_records_total=bad_records_total,
                         steps_per_sec=steps_per_sec,
                         skipped_updates=int(jax.device_get(
                             on_mesh(state.skipped_updates))))
          writer.write_scalars(step, summary, prefix="train")
          progress.show({**{k: summary[k] for k in task.progress_keys},
                         **valid_shown})
          if step % (config.log_every_steps * 10) == 0:
            progress.write(f"step {step}: train " + _format(summary))

        valid_loss = None
        if do_eval:
          valid = evaluate(eval_step, task, task.eval_params(on_mesh(state)), eval_data,
                           mesh, config.num_eval_batches)
          valid_loss = valid[task.valid_metric]
          # Seconds since this launch started (compiles and evals included):
          # learning curves against wall time.
          valid["launch_seconds"] = time.perf_counter() - started
          writer.write_eval(step, valid, split="valid")
          valid_shown = {f"valid_{k}": valid[k] for k in
                         getattr(task, "progress_valid_keys", ()) if k in valid}
          if is_chief and getattr(task, "curve_keys", ()):
            keys = list(task.curve_keys)
            # Rows of earlier launches that lack a key (older code) are left out.
            rows = [r for r in plots.read_eval_rows(workdir)
                    if all(k in r for k in keys)]
            plots.plot_learning_curve(rows, keys, workdir_lib.Layout(workdir).learning_curve,
                                      title=f"{config.task} valid")
          progress.write(f"step {step}: valid " + _format(valid))

        if config.sample_every_steps and step % config.sample_every_steps == 0:
          _write_samples(task, task.eval_params(on_mesh(state)),
                         jax.random.fold_in(sample_rng, step), workdir, step,
                         writer, is_chief)
          last_samples = step

        if do_save:
          checkpoint.save(manager, step, on_mesh(state), train_iter,
                          valid_loss=valid_loss,
                          force=True)
          last_save = _now()
        if stopping:
          stopped = True
          break
    # Freed before the wait for the save: a Ctrl-C also reached grain's
    # workers, and the batch's shared memory must be let go while they live.
    host_batch = batch = None
    manager.wait_until_finished()
    summary = _summary(workdir, config, task, manager, step=step, stopped=stopped,
                       seconds=time.perf_counter() - started,
                       last_samples=last_samples)
  finally:
    # The last batch lives in grain's shared memory until its arrays are
    # freed (asynchronously); freed only at exit, it is reported as leaked.
    host_batch = batch = None
    progress.close()
    manager.wait_until_finished()
    manager.close()
    train_iter.close()  # Stops grain's worker processes and frees their memory.
    writer.close()
  say(summary, flush=True)
  return on_mesh(state)


def _summary(workdir: str, config: config_dict.ConfigDict, task, manager, *,
             step: int, stopped: bool, seconds: float,
             last_samples: int | None) -> str:
  """Where a finished (or stopped) run left everything, and what to run next."""
  layout = workdir_lib.Layout(workdir)
  best = checkpoint.best_step(manager)
  lines = [f"Stopped at step {step} of {config.num_train_steps}; the same "
           "command resumes." if stopped else
           f"Trained to step {step} of {config.num_train_steps}.",
           f"  {progress_lib.format_duration(seconds)} this launch; "
           f"checkpoints: {manager.directory} (latest step "
           f"{manager.latest_step()})"]
  if best is not None:
    metric = manager.metrics(best)["valid_loss"]
    lines.append(f"  best checkpoint: step {best}, valid "
                 f"{task.valid_metric} {metric:.5g}")
  if last_samples is not None:
    lines.append(f"  samples: {layout.samples(last_samples)}")
  lines += [f"  log: {layout.train_log}; "
            f"TensorBoard: tensorboard --logdir {layout.tensorboard}",
            f"  export: python -m musegen_jax.export --workdir={workdir} "
            f"--output=EXPORT_DIR --checkpoint={'best' if best is not None else 'latest'}"]
  return "\n".join(lines)

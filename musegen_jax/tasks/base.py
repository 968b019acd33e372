"""What a task is: the interface the training loop and the tools use, and a
base class for the tasks that train one network.

A task module (`musegen_jax/tasks/<name>.py`, registered in `tasks.TASKS`)
gives:

- `check_config(config)`: rejects out-of-range values of the task's own keys
  before anything is compiled;
- a task class, built as `Task(config, representation)`, that satisfies the
  `Task` protocol below;
- optionally `CONFIG_DEFAULTS`: {"dotted.key": value} for keys added after
  bundles were exported, filled in where a config lacks them so older
  bundles load (`tasks.fill_defaults`);
- optionally `configure_from_data(config, data_dir)`: fills config keys that
  follow from the dataset (the classifier's styles) when a run starts, so
  the run's config.json and its bundles record them
  (`tasks.configure_from_data`);
- optionally `evaluate_num_batches(config)`: the eval batches
  `python -m musegen_jax.evaluate` uses when not told (the GAN's default
  reaches 512 clips; without it, `config.num_eval_batches`).

The loop (`train.py`) uses only the members of `Task`. Beyond them a task
may give:

- `progress_valid_keys`: the last eval's figures shown on the progress bar
  beside `progress_keys`;
- `curve_keys`: valid figures the loop plots against step and wall time in
  WORKDIR/learning_curve.png after every eval;
- `eval_log_probs` and `log_prob_sums` (`ScoresDistributions`): a task whose
  eval scores predictive distributions, with `eval_step` their composition;
  `evaluate` then scores ensembles, the members' probabilities averaged (the
  token and piano-roll tasks).

`SingleNetworkTask` owns everything a one-network task shares: the model,
the learning-rate schedule, the optimizer, the train state (with its
parameter average), `eval_params` and the guarded update. A subclass gives
its losses, its data and its decoding.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Iterable, NamedTuple, Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from ml_collections import config_dict

from musegen_jax import parallel
from musegen_jax.tasks import optim
from musegen_jax.tasks import state as state_lib
from musegen_jax.tasks import steps

Array = jax.Array
# One call `fn(params, rng, *inputs)` with its abstract inputs.
SampleProgram = tuple[Callable[..., Any], tuple[jax.ShapeDtypeStruct, ...]]


@runtime_checkable
class Task(Protocol):
  """What the training loop, `evaluate`, `sample`, `export` and `aot` use.

  Attributes:
    config: the run's config (the loop reads `logical_axis_rules` from it).
    valid_metric: the eval figure that picks the best checkpoint (lower is
      better).
    progress_keys: the train metrics the progress bar shows.
    learning_rate_fn: step -> learning rate, logged with the train metrics;
      or None.
  """

  config: config_dict.ConfigDict
  valid_metric: str
  progress_keys: tuple[str, ...]
  learning_rate_fn: Callable[[Any], Any] | None

  def init_state(self, rng: Array) -> Any:
    """The whole train state: one pytree with `step` and `skipped_updates`
    (a `TrainState` for one network; the GAN's holds both networks, both
    optimizer states and the EMA generator). Its parameters are still boxed
    with their logical axis names (`nn.Partitioned`): the loop derives the
    fsdp shardings from them, then unboxes (`train.create_train_state`)."""

  def train_step(self, state: Any, batch: dict[str, Array], rng: Array,
                 reducer: parallel.Reducer = parallel.IDENTITY
                 ) -> tuple[Any, dict[str, Array]]:
    """One update: `(state, metrics)`, the metrics with a `nonfinite` entry.

    The step sums or averages gradients and metrics over devices through
    `reducer` (`parallel.reduce`: the identity under jit, a reduction over
    the device axis in the replicated mode), so it is written once for
    every parallel mode."""

  def eval_step(self, params: Any, batch: dict[str, Array]) -> dict[str, Array]:
    """Sums over one eval batch; the loop adds them to running totals in the
    same compiled program (`train.accumulating`)."""

  def summarize(self, totals: dict[str, Any], eval_data: Any = None
                ) -> dict[str, float]:
    """The eval figures from the totals of `eval_step` over a split."""

  def eval_params(self, state: Any) -> Any:
    """The parameters evaluation, samples and export use (the average when
    the state keeps one). Also applied to a state's tree of shardings."""

  def prepare_data(self, data_dir: str) -> str:
    """Makes what the task reads from `data_dir`; returns where it lies."""

  def create_train_dataset(self, data_dir: str) -> Iterable[dict[str, Any]]:
    """This process's share of the training batches (a grain dataset).
    Batches may carry "bad_records", which the loop counts and never sends
    to devices."""

  def eval_data(self, data_dir: str, split: str = "valid") -> Any:
    """Everything of `split` that `eval_batches` serves."""

  def eval_batches(self, eval_data: Any) -> Iterable[dict[str, Any]]:
    """This process's share of the fixed-size eval batches over `eval_data`."""

  def write_step_samples(self, params: Any, rng: Array, directory: str | None,
                         title: str) -> list[dict[str, str]]:
    """The loop's periodic samples, as [{"image": png, "wav" | "midi": path}]
    (none when `directory` is None: the non-chief processes)."""

  def write_samples(self, params: Any, rng: Array, directory: str | None,
                    **options: Any) -> list[Any]:
    """`python -m musegen_jax.sample`'s samples; `options` are the task's
    own (length, temperature, primer, interpolation, ...)."""

  def batch_spec(self, split: str = "train") -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of one global batch of "train" or "eval". With
    `sample_program`, `aot.py` compiles every program from shapes alone."""

  def sample_program(self, num_samples: int) -> SampleProgram:
    """The sampling loop of `config.sample` for `num_samples` samples as
    `(fn, inputs)`, called `fn(params, rng, *inputs)`; `inputs` are
    `jax.ShapeDtypeStruct`s."""


@runtime_checkable
class ScoresDistributions(Protocol):
  """A task whose eval scores predictive distributions (ensembles average
  them as probabilities: `evaluate --export=A,B`)."""

  def eval_log_probs(self, params: Any, batch: dict[str, Array]) -> Array:
    """Log-probabilities of every target's possible values."""

  def log_prob_sums(self, log_probs: Array, batch: dict[str, Array]
                    ) -> dict[str, Array]:
    """`eval_step`'s sums from `eval_log_probs` (or an ensemble's average)."""


class Update(NamedTuple):
  """What the guarded update reports besides the new state."""
  sums: dict[str, Array]  # The loss sums over the global batch.
  loss: Array  # The mean loss (loss sum over weight sum).
  grad_norm: Array  # The global norm of the normalized gradients.
  finite: Array  # bool scalar: whether the update was applied.


class SingleNetworkTask(abc.ABC):
  """A task training one network with the shared AdamW (`optim`).

  It owns the model (built by the subclass and handed over), the
  learning-rate schedule, the optimizer, the train state (`state.TrainState`,
  with a parameter average when `config.ema_decay` > 0) and the guarded
  update: gradients of the summed loss over `config.grad_accum_steps`
  micro-batches and the devices, normalized once, applied only when finite.

  A subclass gives `init_inputs` (what the model is initialized on), its
  loss sums (`_sums(params, inputs, key, train)`, or its own `train_step`
  built on `guarded_update`), `train_metrics`, and its data, evaluation and
  decoding.
  """

  valid_metric: str
  progress_keys: tuple[str, ...] = ("loss",)
  # The entries of the loss sums that the update divides: the summed loss
  # and its weight (tokens, frames, sequences).
  loss_key: str = "loss_sum"
  weight_key: str = "weight_sum"

  def __init__(self, config: config_dict.ConfigDict, representation: Any,
               model: nn.Module):
    self.config = config
    self.representation = representation
    self.model = model
    self.learning_rate_fn = optim.create_learning_rate_fn(config)
    # Made once: the optimizer is part of the state's tree structure, which
    # must be the same in every `init_state` (shardings are matched to it).
    self.tx = optim.create_optimizer(config)

  # --- state -----------------------------------------------------------------

  @abc.abstractmethod
  def init_inputs(self) -> Array:
    """A batch of one the model is initialized on (its shapes fix the
    parameters')."""

  def init_params(self, rng: Array, unbox: bool = True,
                  compiler_options: dict[str, Any] | None = None) -> Any:
    """Fresh parameters; with `unbox=False` still in their `nn.Partitioned`
    boxes. `compiler_options`: see `state.init_params` (top-level calls only)."""
    return state_lib.init_params(self.model, rng, self.init_inputs(), unbox,
                                 compiler_options)

  def init_state(self, rng: Array) -> state_lib.TrainState:
    """Fresh parameters and AdamW state (`optim.create_optimizer`).

    Parameters and the optimizer's moments keep their `nn.Partitioned`
    logical axis names; the loop derives shardings from them and unboxes.
    """
    return state_lib.create_train_state(self.config, self.model.apply,
                                        self.init_params(rng, unbox=False), self.tx)

  @staticmethod
  def eval_params(state: state_lib.TrainState) -> Any:
    """What evaluation, samples and export use: the parameters, or their
    average with `config.ema_decay` > 0."""
    return state_lib.eval_params(state)

  @staticmethod
  def prepare_data(data_dir: str) -> str:
    """Nothing to prepare by default: the data serves as it is."""
    return data_dir

  # --- the update ------------------------------------------------------------

  def guarded_update(self, state: state_lib.TrainState, inputs: Any, rng: Array,
                     sums_fn: Callable[[Any, Any, Array], dict[str, Array]],
                     reducer: parallel.Reducer = parallel.IDENTITY
                     ) -> tuple[state_lib.TrainState, Update]:
    """One AdamW update on the weighted mean loss of the global batch.

    `sums_fn(params, micro_inputs, key)` gives the loss sums of one
    micro-batch of `inputs` (a pytree of [batch, ...] arrays), among them
    `loss_key` and `weight_key`. Their gradients are added up over the
    micro-batches and devices and divided by the total weight
    (`steps.summed_loss_gradients`: the key is `rng` folded with the
    micro-batch and the device), so accumulation and device count do not
    change the update. A non-finite loss or gradient leaves the state as it
    was and counts a skipped update (`state.apply_finite_update`).
    """
    sums, grads, loss = steps.summed_loss_gradients(
        state.params, inputs, rng, sums_fn, loss_key=self.loss_key,
        weight_key=self.weight_key, num=self.config.grad_accum_steps,
        reducer=reducer)
    grad_norm = optax.tree.norm(grads)
    state, finite = state_lib.apply_finite_update(state, grads, loss, grad_norm)
    return state, Update(sums, loss, grad_norm, finite)

  @staticmethod
  def step_metrics(update: Update, metrics: dict[str, Array]) -> dict[str, Array]:
    """A step's metrics: the loss, then `metrics`, the gradient norm and
    `nonfinite` (1.0 when the update was skipped)."""
    return {"loss": update.loss, **metrics, "grad_norm": update.grad_norm,
            "nonfinite": (~update.finite).astype(jnp.float32)}

  def train_inputs(self, batch: dict[str, Array]) -> Any:
    """What the update splits into micro-batches: the batch by default."""
    return batch

  def train_metrics(self, sums: dict[str, Array]) -> dict[str, Array]:
    """Train metrics besides loss, grad_norm and nonfinite, from the loss sums."""
    del sums
    return {}

  @abc.abstractmethod
  def _sums(self, params: Any, inputs: Any, rng: Array | None, train: bool
            ) -> dict[str, Array]:
    """The loss sums of `inputs` (`train_inputs` of a batch), among them
    `loss_key` and `weight_key`; the key drives dropout when `train`."""

  def train_step(self, state: state_lib.TrainState, batch: dict[str, Array],
                 rng: Array, reducer: parallel.Reducer = parallel.IDENTITY
                 ) -> tuple[state_lib.TrainState, dict[str, Array]]:
    """One guarded AdamW update over the batch (`guarded_update`).

    The key of the loss is `rng` folded with the step, then with the
    micro-batch and the device.

    Args:
      state: the train state.
      batch: the step's share of the global batch.
      rng: the run's step key.
      reducer: sums over the devices (parallel.reduce; identity under jit).
    """
    state, update = self.guarded_update(
        state, self.train_inputs(batch), jax.random.fold_in(rng, state.step),
        lambda params, inputs, key: self._sums(params, inputs, key, train=True),
        reducer)
    return state, self.step_metrics(update, self.train_metrics(update.sums))

  # --- what every task gives -------------------------------------------------

  @abc.abstractmethod
  def create_train_dataset(self, data_dir: str) -> Iterable[dict[str, Any]]:
    """This process's share of the training batches (see `Task`)."""

  @abc.abstractmethod
  def eval_data(self, data_dir: str, split: str = "valid") -> Any:
    """Everything of `split` that `eval_batches` serves."""

  @abc.abstractmethod
  def eval_batches(self, eval_data: Any) -> Iterable[dict[str, Any]]:
    """This process's share of the eval batches over `eval_data`."""

  @abc.abstractmethod
  def batch_spec(self, split: str = "train") -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of one global batch of `split`."""

  @abc.abstractmethod
  def eval_step(self, params: Any, batch: dict[str, Array]) -> dict[str, Array]:
    """Sums over one eval batch."""

  @abc.abstractmethod
  def summarize(self, totals: dict[str, Any], eval_data: Any = None
                ) -> dict[str, float]:
    """The eval figures from the totals of `eval_step`."""

  @abc.abstractmethod
  def sample_program(self, num_samples: int) -> SampleProgram:
    """The sampling loop of `config.sample` as `(fn, inputs)`."""

  @abc.abstractmethod
  def write_samples(self, params: Any, rng: Array, directory: str | None,
                    **options: Any) -> list[Any]:
    """Samples written into `directory` (see `Task`)."""

  @abc.abstractmethod
  def write_step_samples(self, params: Any, rng: Array, directory: str | None,
                         title: str) -> list[dict[str, str]]:
    """The loop's periodic samples (see `Task`)."""

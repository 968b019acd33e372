"""What every task's train step shares: the state, the optimizer and the guarded update."""

from __future__ import annotations

import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state
from ml_collections import config_dict

from musegen_jax import backend
from musegen_jax import parallel

Array = jax.Array

# Removes `nn.Partitioned` boxes (logical axis names) from a pytree: what
# init_state returns carries them, the state the steps see does not.
unbox = nn.meta.unbox


class TrainState(train_state.TrainState):
  """flax's TrainState plus the updates skipped as non-finite and an
  optional exponential moving average of the parameters.

  With `ema_decay` > 0 (`create_train_state`), every applied update also
  sets ema_params = decay * ema_params + (1 - decay) * params; a skipped
  (non-finite) update leaves it as it was. `eval_params` then evaluates,
  samples and exports the average. With `ema_decay` 0, `ema_params` is None
  and the state's tree is that of plain flax (old checkpoints restore).
  """
  skipped_updates: Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.int32))
  ema_params: Any = None
  ema_decay: float = struct.field(pytree_node=False, default=0.0)

  def apply_gradients(self, *, grads: Any, **kwargs) -> "TrainState":
    new = super().apply_gradients(grads=grads, **kwargs)
    if self.ema_params is None:
      return new
    decay = self.ema_decay
    return new.replace(ema_params=jax.tree.map(
        lambda avg, p: decay * avg + (1.0 - decay) * p, self.ema_params,
        new.params))


def initializer_compiler_options() -> dict[str, Any] | None:
  """XLA options for the programs that create parameters and train states.

  They run once, so on CPU they are compiled at LLVM's level 1 instead of
  its default: every random draw of an initializer is a threefry hash of 20
  unrolled rounds, which the default level spends up to a second on (the
  WaveGAN smoke state: 11.2-11.5 s to compile against 3.8-4.3 s at level 1
  on a 2-core CPU; BUILD_NOTES.md, round 15). The values are the same bit
  for bit; the run itself is about as long (the full WaveGAN state: 0.8 s,
  0.9 s at level 1). Other backends keep their defaults.
  """
  if not backend.on_cpu():
    return None
  return {"xla_backend_optimization_level": 1}


def inside_a_trace() -> bool:
  """Whether a jit, eval_shape or other transformation is being traced.

  JAX has no public call for this; `jax._src.core.trace_state_clean` is
  read, and when it is missing the answer is True (the caller then takes
  the path that is always valid). tests/test_train.py checks it both ways.
  """
  try:
    from jax._src import core  # pylint: disable=import-outside-toplevel
    return not core.trace_state_clean()
  except (ImportError, AttributeError):
    return True


def run_initializer(init: Callable[..., Any], rng: Array, *args,
                    **jit_kwargs) -> Any:
  """`init(rng, *args)` jitted (`jit_kwargs`) with
  `initializer_compiler_options`. Inside an enclosing trace (a jit, or
  export's `eval_shape`) it is a plain nested jit, inlined there: jit takes
  compiler options only at the top level."""
  options = None if inside_a_trace() else initializer_compiler_options()
  return jax.jit(init, compiler_options=options, **jit_kwargs)(rng, *args)


def init_params(model: nn.Module, rng: Array, inputs: Array,
                unbox_params: bool = True) -> Any:
  """`model.init(..., train=False)["params"]`, compiled as one program.

  Run eagerly, init dispatches every operation of the model on its own: a
  second or more per layer on a CPU (18 s for an 8-layer Transformer),
  against one compile. Inside a jit (the train state's creation) it is
  inlined as before, and gives the same values either way.
  """
  params = run_initializer(
      lambda r, x: model.init({"params": r}, x, train=False)["params"], rng,
      inputs)
  return unbox(params) if unbox_params else params


def create_train_state(config: config_dict.ConfigDict, apply_fn: Callable,
                       params: Any, tx: optax.GradientTransformation
                       ) -> TrainState:
  """A TrainState, with a parameter average when `config.ema_decay` > 0.

  `config.ema_decay` (absent: 0) must be in [0, 1).
  """
  decay = float(config.get("ema_decay", 0.0))
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"config.ema_decay={decay} must be in [0, 1)")
  return TrainState.create(apply_fn=apply_fn, params=params, tx=tx,
                           ema_params=params if decay > 0 else None,
                           ema_decay=decay)


def eval_params(state: TrainState) -> Any:
  """The parameter average when the state keeps one, else the parameters."""
  return state.params if state.ema_params is None else state.ema_params


def create_learning_rate_fn(config: config_dict.ConfigDict) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then cosine decay to the end factor."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate,
      warmup_steps=config.warmup_steps,
      decay_steps=max(config.num_train_steps, config.warmup_steps + 1),
      end_value=config.learning_rate * config.end_learning_rate_factor)


def create_optimizer(config: config_dict.ConfigDict) -> optax.GradientTransformation:
  """AdamW with global-norm gradient clipping on the shared schedule."""
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      optax.adamw(create_learning_rate_fn(config), b1=config.adam_b1,
                  b2=config.adam_b2, weight_decay=config.weight_decay))


def keep_if_finite(new_state: Any, old_state: Any, finite: Array) -> Any:
  """`new_state` if `finite`, else `old_state` with its step advanced.

  Both states carry `step` and `skipped_updates`; a skipped update counts
  one more skip. The step advances either way, so the next batch and key
  follow as usual.
  """
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                      new_state, old_state)
  return kept.replace(
      step=new_state.step,
      skipped_updates=old_state.skipped_updates + (~finite).astype(jnp.int32))


def apply_finite_update(state: TrainState, grads: Any, loss: Array,
                        grad_norm: Array) -> tuple[TrainState, Array]:
  """Applies `grads` unless the loss or any gradient is NaN or Inf.

  `grad_norm` (the global norm of `grads`, which the step computes anyway)
  is finite exactly when every gradient is, short of a norm that overflows
  float32, which counts as non-finite too.

  A non-finite update leaves the parameters and optimizer state as they
  were and counts one skipped update (`keep_if_finite`). Whether the run
  then stops is the loop's decision (`config.nonfinite`).

  Returns:
    (new state, finite: bool scalar).
  """
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  return keep_if_finite(state.apply_gradients(grads=grads), state, finite), finite


def micro_batches(x: Array, num: int) -> Array:
  """[batch, ...] -> [num, batch / num, ...]: micro-batch k holds rows k, k + num, ...

  Strided rather than contiguous, so each device's rows of a batch split over
  devices stay on that device in every micro-batch (no resharding).
  """
  if x.shape[0] % num:
    raise ValueError(f"batch of {x.shape[0]} does not split into {num} micro-batches")
  return jnp.swapaxes(x.reshape((x.shape[0] // num, num) + x.shape[1:]), 0, 1)


def accumulate(fn: Callable[[Any], Any], micro_inputs: Any, num: int) -> Any:
  """The sum over micro-batches of `fn(inputs)`, in a `lax.scan`.

  Args:
    fn: one micro-batch's inputs -> a pytree of arrays to sum (gradients,
      loss sums, ...).
    micro_inputs: a pytree whose leaves have a leading axis of `num`.
    num: the number of micro-batches; 1 calls `fn` once, without a loop,
      and returns its result as it is (so non-additive outputs such as batch
      statistics pass through unchanged).
  """
  if num == 1:
    return fn(jax.tree.map(lambda x: x[0], micro_inputs))
  first = jax.tree.map(lambda x: x[0], micro_inputs)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(fn, first))

  def body(total, inputs):
    return jax.tree.map(jnp.add, total, fn(inputs)), None

  total, _ = jax.lax.scan(body, zeros, micro_inputs)
  return total


def summed_loss_gradients(params: Any, batch: Any, rng: Array,
                          sums_fn: Callable[[Any, Any, Array], dict[str, Array]],
                          *, loss_key: str, weight_key: str, num: int,
                          reducer: parallel.Reducer = parallel.IDENTITY
                          ) -> tuple[dict[str, Array], Any, Array]:
  """Gradients of a summed loss over micro-batches and devices, normalized once.

  `sums_fn(params, micro_batch, key)` returns sums, among them the loss sum
  `loss_key` and its weight `weight_key` (tokens, frames). The gradients of
  each of the `num` micro-batches' loss sums are added up (and summed over
  the devices by `reducer`), then divided by the total weight: the exact
  weighted mean of the whole global batch, whatever the split. The key is
  `rng` folded with the micro-batch index and the device
  (`reducer.device_key`).

  Returns:
    (summed sums, normalized gradients, mean loss).
  """
  rng = reducer.device_key(rng)

  def micro(inputs):
    micro_batch, index = inputs
    key = rng if num == 1 else jax.random.fold_in(rng, index)

    def loss_sum(params):
      sums = sums_fn(params, micro_batch, key)
      return sums[loss_key], sums

    (_, sums), grads = jax.value_and_grad(loss_sum, has_aux=True)(params)
    return sums, grads

  inputs = (jax.tree.map(lambda x: micro_batches(x, num), batch), jnp.arange(num))
  sums, grads = reducer.sum(accumulate(micro, inputs, num))
  weight = jnp.maximum(sums[weight_key], 1.0)
  return sums, jax.tree.map(lambda g: g / weight, grads), sums[loss_key] / weight


def slerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
  """`steps` points on the great circle from `a` to `b` (ends included).

  Falls back to a straight line when the two are (anti)parallel. The first
  point is `a` and the last `b` exactly (in float32), so decoding the ends
  decodes the two latents themselves.

  Returns:
    [steps, dim] float32.
  """
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  t = np.linspace(0.0, 1.0, steps)[:, None]
  cos = np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)
  omega = np.arccos(np.clip(cos, -1.0, 1.0))
  if np.sin(omega) < 1e-6:
    path = ((1 - t) * a + t * b).astype(np.float32)
  else:
    path = ((np.sin((1 - t) * omega) * a + np.sin(t * omega) * b)
            / np.sin(omega)).astype(np.float32)
  path[0] = a
  if steps > 1:
    path[-1] = b
  return path


def check_model_name(config: config_dict.ConfigDict, allowed) -> None:
  """Raises ValueError unless config.model.name is one of `allowed`."""
  if config.model.name not in allowed:
    raise ValueError(f"config.model.name={config.model.name!r}; the "
                     f"{config.task} task trains one of: {', '.join(allowed)}")


def check_ranges(positive: dict[str, Any] | None = None,
                 non_negative: dict[str, Any] | None = None,
                 fractions: dict[str, Any] | None = None) -> None:
  """Raises ValueError naming the first config key out of its range.

  Args:
    positive: {"dotted.key": value} that must be > 0.
    non_negative: {"dotted.key": value} that must be >= 0.
    fractions: {"dotted.key": value} that must be in [0, 1) (rates, decays).
  """
  for key, value in (positive or {}).items():
    if not value > 0:
      raise ValueError(f"config.{key}={value!r} must be > 0")
  for key, value in (non_negative or {}).items():
    if not value >= 0:
      raise ValueError(f"config.{key}={value!r} must be >= 0")
  for key, value in (fractions or {}).items():
    if not 0 <= value < 1:
      raise ValueError(f"config.{key}={value!r} must be in [0, 1)")


def check_optimizer_ranges(config: Any) -> None:
  """The optimizer keys every task shares: learning_rate > 0, the schedule,
  decay and clipping keys the config has >= 0, Adam's betas in [0, 1), and
  grad_accum_steps >= 1."""
  check_ranges(
      positive={"learning_rate": config.learning_rate},
      non_negative={key: config[key] for key in
                    ("warmup_steps", "weight_decay", "grad_clip_norm")
                    if key in config},
      fractions={key: config[key] for key in ("adam_b1", "adam_b2")
                 if key in config})
  if config.grad_accum_steps < 1:
    raise ValueError(f"config.grad_accum_steps={config.grad_accum_steps} must be >= 1")


def write_token_step_samples(task: Any, params: Any, rng: Array,
                             directory: str | None, title: str
                             ) -> list[dict[str, str]]:
  """A token task's periodic samples, as `task.config.sample` describes.

  Calls `task.write_samples` (which writes `sample_NNN.mid` + `.png` and
  returns the MIDI paths) and returns one {"midi", "image"} per sample
  (none when `directory` is None).
  """
  sample = task.config.sample
  paths = task.write_samples(
      params, rng, directory, num_samples=sample.num_samples,
      length=sample.length, temperature=sample.temperature,
      top_k=sample.top_k, top_p=sample.top_p, title=title)
  return [{"midi": p, "image": os.path.splitext(p)[0] + ".png"} for p in paths]

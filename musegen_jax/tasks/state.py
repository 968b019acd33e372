"""The train state of one network: parameters, optimizer state, the parameter
average (EMA) and the updates skipped as non-finite; how parameters are
created, and the guarded update that keeps a state whole when a step is not
finite."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state
from ml_collections import config_dict

from musegen_jax import backend

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
  unrolled rounds, which the default level spends up to a second on, while
  the programs run about as long at level 1. The values are the same bit for
  bit. Other backends keep their defaults.
  """
  if not backend.on_cpu():
    return None
  return {"xla_backend_optimization_level": 1}


def init_params(model: nn.Module, rng: Array, inputs: Array,
                unbox_params: bool = True,
                compiler_options: dict[str, Any] | None = None) -> Any:
  """`model.init(..., train=False)["params"]`, compiled as one program.

  Run eagerly, init dispatches every operation of the model on its own,
  which on a CPU takes far longer than compiling the whole initializer once.
  Inside a jit (the train state's creation) it is inlined, and gives the
  same values either way. `compiler_options` (for example
  `initializer_compiler_options()`) apply only to a call at the top level:
  jit takes them there alone.
  """
  params = jax.jit(
      lambda r, x: model.init({"params": r}, x, train=False)["params"],
      compiler_options=compiler_options)(rng, inputs)
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

"""Gradients over micro-batches and devices: one global batch split into
`config.grad_accum_steps` micro-batches, summed in a scan and over devices,
normalized once."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from musegen_jax import parallel

Array = jax.Array


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

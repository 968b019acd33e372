"""The platform the programs being built will run on.

Kernels (`musegen_jax.kernels`) and tasks pick an implementation by
platform (block convolutions and a hand-written attention backward on CPU,
XLA's own elsewhere). They ask `platform()`, not `jax.default_backend()`:
the two differ when a CPU host compiles for TPU chips that are not there
(`musegen_jax.aot`), which sets the target with `compiling_for("tpu")` for
the duration of its compiles.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import jax

_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "musegen_jax_target_platform", default=None)


def platform() -> str:
  """"cpu", "gpu" or "tpu": the target set by `compiling_for`, else JAX's
  default backend."""
  return _TARGET.get() or jax.default_backend()


def on_cpu() -> bool:
  return platform() == "cpu"


@contextlib.contextmanager
def compiling_for(target: str) -> Iterator[None]:
  """Programs traced inside this block are built for `target`."""
  token = _TARGET.set(target)
  try:
    yield
  finally:
    _TARGET.reset(token)

"""Where prepared datasets, rendered audio and compiled programs are cached."""

from __future__ import annotations

import os


def default_cache_dir() -> str:
  """$MUSEGEN_JAX_CACHE, else $XDG_CACHE_HOME/musegen_jax, else ~/.cache/musegen_jax."""
  if os.environ.get("MUSEGEN_JAX_CACHE"):
    return os.environ["MUSEGEN_JAX_CACHE"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "musegen_jax")

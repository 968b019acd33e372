"""The persistent compilation cache (musegen_jax/compile_cache.py).

Each case runs in a fresh interpreter: this process's JAX already has the
session's cache configured (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from musegen_jax import compile_cache

# Enables the cache under argv[1], compiles one program (even a fast compile
# is written: min_compile_time 0) and prints what happened.
_SCRIPT = """
import json, sys
import numpy as np
import jax, jax.numpy as jnp
from musegen_jax import compile_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
path = compile_cache.enable(sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
x = jax.jit(lambda a: jnp.tanh(a @ a.T).sum())(np.ones((64, 64), np.float32))
print(json.dumps({"path": path, "value": float(x),
                  "max_size": jax.config.jax_compilation_cache_max_size,
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def _run(root: str, **env: str) -> dict:
  environ = {k: v for k, v in os.environ.items()
             if k not in ("JAX_COMPILATION_CACHE_DIR", "MUSEGEN_JAX_COMPILE_CACHE")}
  environ.update(env)
  done = subprocess.run([sys.executable, "-c", _SCRIPT, root], env=environ,
                        capture_output=True, text=True, check=True)
  return dict(json.loads(done.stdout.strip().splitlines()[-1]),
              stderr=done.stderr)


def test_second_process_loads_the_program_the_first_compiled(tmp_path):
  first = _run(str(tmp_path))
  assert first["path"] == str(tmp_path / "xla")
  assert (first["misses"], first["hits"]) == (1, 0)
  assert os.listdir(tmp_path / "xla")  # The compiled program, on disk.
  assert first["max_size"] == 2 << 30
  second = _run(str(tmp_path))
  assert (second["misses"], second["hits"]) == (0, 1)
  assert second["value"] == first["value"]


def test_a_configured_cache_or_the_opt_out_is_left_alone(tmp_path):
  own = tmp_path / "own"
  result = _run(str(tmp_path), JAX_COMPILATION_CACHE_DIR=str(own))
  assert result["path"] == str(own) and result["misses"] == 1
  assert not (tmp_path / "xla").exists() and os.listdir(own)
  off = _run(str(tmp_path), MUSEGEN_JAX_COMPILE_CACHE="0")
  assert off["path"] is None and off["hits"] == off["misses"] == 0
  assert not (tmp_path / "xla").exists()


def test_an_entry_cut_short_by_a_killed_writer_is_replaced(tmp_path):
  _run(str(tmp_path))
  cache = tmp_path / "xla"
  # JAX's layout, which compile_cache.drop_incomplete relies on: each entry
  # `<key>-cache` beside its `<key>-atime`, and the directory's lock file.
  names = os.listdir(cache)
  entries = [n for n in names if n.endswith(compile_cache.ENTRY_SUFFIX)]
  assert len(entries) == 1 and compile_cache.LOCK_NAME in names
  key = entries[0][:-len(compile_cache.ENTRY_SUFFIX)]
  assert key + compile_cache.ATIME_SUFFIX in names
  # A writer killed mid-write: the entry truncated, its -atime never written.
  entry = cache / entries[0]
  entry.write_bytes(entry.read_bytes()[:100])
  (cache / (key + compile_cache.ATIME_SUFFIX)).unlink()
  second = _run(str(tmp_path))
  assert (second["misses"], second["hits"]) == (1, 0)
  assert "removed 1 incomplete entries" in second["stderr"]
  assert "Error reading persistent compilation cache" not in second["stderr"]
  assert entry.stat().st_size > 100  # Written again, whole.
  third = _run(str(tmp_path))
  assert (third["misses"], third["hits"]) == (0, 1)
  assert third["value"] == second["value"]

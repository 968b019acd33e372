"""A persistent XLA compilation cache for the command-line tools.

Compiling a config's train, eval and sampling programs takes from seconds
(the LSTM) to about a minute (WaveGAN's step with its gradient penalty on a
CPU), and every resume, `sample` or `evaluate` of the same model compiles
the same programs again. JAX can keep compiled programs on disk,
keyed by the program, its compile options, the devices and the jax/jaxlib
versions, and load them instead of compiling. `enable()` turns that on in
`<cache root>/xla`, beside the prepared datasets ($MUSEGEN_JAX_CACHE, else
$XDG_CACHE_HOME/musegen_jax, else ~/.cache/musegen_jax), for programs that
took at least a second to compile, up to 2 GiB (least recently used entries
are dropped first).

Left alone: a cache directory the user configured (`$JAX_COMPILATION_CACHE_DIR`
or `jax.config.update("jax_compilation_cache_dir", ...)`), and
`MUSEGEN_JAX_COMPILE_CACHE=0`, which leaves JAX's default (no cache).
The commands turn it on through `runtime.setup(compile_cache=True)`;
`bench` does not: its compile_s is the compiler's time. The size
limit needs the `filelock` package (a dependency): without it JAX would turn
the cache off with only a logged warning.

A process killed while JAX writes an entry (preemption, the OOM killer,
SIGKILL) leaves a truncated file, which JAX never replaces: every later run
would warn "Error reading persistent compilation cache entry" and compile
that program again. JAX writes an entry's `-cache` file and then its
`-atime` file, under the directory's lock, so `enable()` first removes
entries that have no `-atime` file (`drop_incomplete`); the next compile
writes them anew. An entry truncated and then read before this ran (it then
has an `-atime` file) is not detected.
"""

from __future__ import annotations

import os

from absl import logging
import filelock
import jax

OPT_OUT = "MUSEGEN_JAX_COMPILE_CACHE"
SUBDIR = "xla"
MAX_BYTES = 2 << 30
# The names JAX's least-recently-used cache gives an entry's files and the
# directory's lock, pinned by tests/test_compile_cache.py against the
# installed JAX.
ENTRY_SUFFIX, ATIME_SUFFIX, LOCK_NAME = "-cache", "-atime", ".lockfile"


def drop_incomplete(path: str, timeout_s: float = 10.0) -> list[str]:
  """Removes entries of the cache in `path` that have no `-atime` file.

  Holds the cache's lock, so an entry another process is writing is not
  touched. A complete entry whose writer died between its two files is
  removed too (it costs one compile). Returns the removed files' names.
  """
  try:
    with filelock.FileLock(os.path.join(path, LOCK_NAME), timeout=timeout_s):
      names = set(os.listdir(path))
      dropped = sorted(
          name for name in names if name.endswith(ENTRY_SUFFIX)
          and name[:-len(ENTRY_SUFFIX)] + ATIME_SUFFIX not in names)
      for name in dropped:
        os.remove(os.path.join(path, name))
  except filelock.Timeout:
    logging.warning("compile cache %s is locked; not checked for incomplete "
                    "entries", path)
    return []
  if dropped:
    logging.warning("compile cache %s: removed %d incomplete entries (a "
                    "process was killed while writing them): %s", path,
                    len(dropped), ", ".join(dropped))
  return dropped


def enable(cache_root: str | None = None) -> str | None:
  """Points JAX's persistent compilation cache at `<cache_root>/xla`.

  Call before the first compile. Returns the directory in use (the user's
  own, if one was configured), or None when the cache stays off.
  """
  if os.environ.get(OPT_OUT) == "0":
    return None
  configured = jax.config.jax_compilation_cache_dir
  if configured:
    return configured
  if cache_root is None:
    from musegen_jax.data import cache  # pylint: disable=import-outside-toplevel
    cache_root = cache.default_cache_dir()
  path = os.path.join(cache_root, SUBDIR)
  os.makedirs(path, exist_ok=True)
  drop_incomplete(path)
  jax.config.update("jax_compilation_cache_dir", path)
  if jax.config.jax_compilation_cache_max_size < 0:  # JAX's default: unbounded.
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  return path

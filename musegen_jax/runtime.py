"""Process set-up for the command-line tools: opt-in, idempotent.

`import musegen_jax` changes nothing outside the package: no import hooks,
no environment variables, no warning filters. The commands (`main`,
`evaluate`, `sample`, `export`, `prepare`, `aot`, `bench`, `bench_torch`)
call `setup()` first; a notebook or a test that imports the library without
it gets the same results, only a slower start and more warnings.

`setup()` always does the import-side part, once per process:

- note_seq's notebook helpers import bokeh and pandas, which musegen_jax
  never uses; they are deferred until first used (`_deferred_imports`),
  about half of `import note_seq`.
- the warnings pydub prints when note_seq imports it (no ffmpeg, audioop
  deprecated) are filtered: musegen_jax uses neither.

and, when asked:

- `hugepages=True`: re-executes the command with huge-page malloc
  (`hugepages.reexec_with_huge_pages`); call it before anything else
  happens in the process.
- `compile_cache=True`: JAX's persistent compilation cache in the cache
  directory (`compile_cache.enable`); call it before the first compile.

The import-side part must come before note_seq is imported. A command's
module calls `setup_if_run_as_command(__name__)` at import, which does it
when the module runs as the command (`python -m`) and in the worker
processes the command spawns (grain's data workers, `prepare`'s converters):
those import the command's module again, but not its `run()`.
"""

from __future__ import annotations

import os
import sys
import warnings

_done: set[str] = set()
_compile_cache_dir: str | None = None


def setup(*, hugepages: bool = False, compile_cache: bool = False) -> str | None:
  """Applies the set-up described in the module docstring; each part once.

  Returns the compilation cache directory in use (None when it is off or
  was not asked for).
  """
  global _compile_cache_dir
  if hugepages and "hugepages" not in _done:
    _done.add("hugepages")
    from musegen_jax import hugepages as hugepages_lib  # pylint: disable=import-outside-toplevel
    hugepages_lib.reexec_with_huge_pages()
  if "imports" not in _done:
    _done.add("imports")
    _quiet_pydub_warnings()
    from musegen_jax import _deferred_imports  # pylint: disable=import-outside-toplevel
    _deferred_imports.install()
  if compile_cache and "compile_cache" not in _done:
    _done.add("compile_cache")
    from musegen_jax import compile_cache as compile_cache_lib  # pylint: disable=import-outside-toplevel
    _compile_cache_dir = compile_cache_lib.enable()
  return _compile_cache_dir


def setup_if_run_as_command(module_name: str) -> None:
  """`setup()` when the calling module (`module_name`: its `__name__`) runs
  as the command (`python -m`, or an installed `musegen-*` console script,
  which imports the module before calling its `run`), or in a process
  spawned by one; elsewhere nothing.

  multiprocessing's spawn start method runs the parent's main module again
  (as `__mp_main__`) in each worker before the worker unpickles its work,
  which imports note_seq; such a worker's command line ends in
  `--multiprocessing-fork`. A module imported by a notebook or a test is
  neither, and sets nothing up.
  """
  spawned = "--multiprocessing-fork" in getattr(sys, "orig_argv", ())
  script = os.path.basename(sys.argv[0] if sys.argv else "")
  if module_name == "__main__" or spawned or script.startswith("musegen-"):
    setup()


def _quiet_pydub_warnings() -> None:
  warnings.filterwarnings("ignore", message="Couldn't find ffmpeg",
                          category=RuntimeWarning)
  warnings.filterwarnings("ignore", message="'audioop' is deprecated",
                          category=DeprecationWarning)

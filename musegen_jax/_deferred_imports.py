"""Defers the plotting libraries note_seq imports for its notebook helpers.

`import note_seq` runs `note_seq.notebook_utils`, which imports bokeh and
pandas at module level for `plot_sequence` and `play_sequence`, helpers
musegen_jax never calls. The two take about half of note_seq's import time,
paid by every run's start and every grain worker's. `install()`, called by
`runtime.setup()` (never at import), adds an import hook: while that one
module executes, `bokeh`, `bokeh.plotting` and
`pandas` resolve to placeholder modules that import the real library on
first attribute access; afterwards the placeholders leave `sys.modules`, so
any other `import bokeh` or `import pandas` is the ordinary one. A notebook
that calls `note_seq.plot_sequence` gets the real libraries at that call.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

_TARGET = "note_seq.notebook_utils"
_DEFERRED = ("bokeh", "bokeh.plotting", "pandas")


class _Placeholder(types.ModuleType):
  """Stands in for a module; imports the real one on first attribute access."""

  def __getattr__(self, attr):
    # Only attributes this module object lacks get here; `__spec__` and the
    # other module attributes the import system reads are set, so imports
    # that find a placeholder in sys.modules do not resolve it.
    real = sys.modules.get(self.__name__)
    if real is None or real is self:
      sys.modules.pop(self.__name__, None)
      real = importlib.import_module(self.__name__)
    if hasattr(real, attr):
      return getattr(real, attr)
    try:  # A submodule not imported yet, such as bokeh.models.
      return importlib.import_module(f"{self.__name__}.{attr}")
    except ModuleNotFoundError:
      raise AttributeError(
          f"module {self.__name__!r} has no attribute {attr!r}") from None


class _DeferringLoader(importlib.abc.Loader):
  """Runs `_TARGET` with placeholders for the libraries in `_DEFERRED`."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    placed = []
    for name in _DEFERRED:
      if name not in sys.modules:
        sys.modules[name] = _Placeholder(name)
        placed.append(name)
    try:
      self._loader.exec_module(module)
    finally:
      for name in placed:
        if isinstance(sys.modules.get(name), _Placeholder):
          del sys.modules[name]


class _Finder(importlib.abc.MetaPathFinder):
  """Hands `_TARGET` to `_DeferringLoader`; every other import is untouched."""

  def find_spec(self, fullname, path, target=None):
    if fullname != _TARGET:
      return None
    spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
    if spec is not None and spec.loader is not None:
      spec.loader = _DeferringLoader(spec.loader)
    return spec


def install() -> None:
  """Adds the finder once, unless note_seq's helpers are already imported."""
  if _TARGET in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
    return
  sys.meta_path.insert(0, _Finder())

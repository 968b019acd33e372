"""Test setup: 8 forced CPU devices and a private, session-wide data cache.

XLA_FLAGS must be set before jax is imported anywhere, so it is set here, at
collection time. Subprocesses started by tests inherit both variables.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import tempfile

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
# The tests run on CPU devices; with libtpu installed (the `tpu` extra, for
# tests/test_aot.py) JAX would first look for TPU chips and warn on stderr.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MUSEGEN_JAX_CACHE", tempfile.mkdtemp(prefix="musegen_jax_test_cache-"))

import pytest  # pylint: disable=wrong-import-position

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(items) -> None:
  """Runs the tests marked `slow` (15 s or more in the suite on a 2-core CPU)
  first, each group in its collected order.

  pytest-xdist hands out the first quarter of the tests round-robin, then the
  rest to whichever worker is free. With the long tests first, they spread
  over both workers early, and the run ends on short tests instead of one
  worker finishing a two-minute test while the other idles.
  """
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session", autouse=True)
def _compile_cache() -> None:
  """JAX's persistent compilation cache in the session's cache folder, as the
  command-line tools enable it (musegen_jax/compile_cache.py): tests that
  build the same programs again (a resume test runs one config three times)
  load them instead of compiling."""
  from musegen_jax import compile_cache
  compile_cache.enable()


@contextlib.contextmanager
def fewer_xla_optimizations():
  """Compiles with most XLA optimizations off (`jax_disable_most_optimizations`).

  For tests whose programs run a few steps at tiny shapes: compiling them is
  most of the test's time, and takes about half as long this way (the GAN's
  gradient-penalty step: 15 s against 8 s on a 2-core CPU). The programs are
  the same functions, compiled; only float summation order can differ.
  """
  import jax
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture
def fewer_optimizations():
  """`fewer_xla_optimizations` for one test; a module takes it for all its
  tests with `pytestmark = pytest.mark.usefixtures("fewer_optimizations")`."""
  with fewer_xla_optimizations():
    yield


@pytest.fixture(scope="session")
def jsb_data_dir() -> str:
  """The bundled JSB Chorales prepared into shards (once per session)."""
  from musegen_jax.prepare import ensure_default_dataset
  return ensure_default_dataset()


def load_config(name: str, variant: str | None = "smoke", **overrides):
  """`get_config(variant)` of configs/<name>.py, locked as the command line does.

  Keyword overrides use "__" for nesting: `model__hidden_size=16`.
  """
  spec = importlib.util.spec_from_file_location(
      f"configs_{name}", os.path.join(REPO_ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant)
  config.lock()
  for key, value in overrides.items():
    *parents, leaf = key.split("__")
    node = config
    for parent in parents:
      node = node[parent]
    setattr(node, leaf, value)
  return config


def tiny_lstm_config(**overrides):
  """The LSTM config at test size (1 x 32 LSTM, 32 tokens, batch 16), locked.

  Keyword overrides as in `load_config`.
  """
  settings = dict(model__embed_dim=16, model__hidden_size=32, model__num_layers=1,
                  data__seq_len=32, batch_size=16, num_train_steps=10,
                  warmup_steps=2, log_every_steps=5, eval_every_steps=1000,
                  checkpoint_every_steps=10, sample_every_steps=0,
                  num_eval_batches=1)
  settings.update(overrides)
  return load_config("lstm", **settings)


def log_rows(workdir, split: str = "train") -> list[dict]:
  """The rows of WORKDIR/train_log.jsonl of one split: the per-step training
  rows ("train") or the evaluations ("valid", rows with a "split" key)."""
  with open(os.path.join(str(workdir), "train_log.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return [r for r in rows if r.get("split", "train") == split]

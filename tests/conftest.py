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


# The styles of `styles_data_dir`: name -> (lowest pitch, note length in
# quarters, notes per chord).
_STYLE_CORPUS = {"chorale": (79, 1.0, 3), "drone": (36, 4.0, 1), "runs": (62, 0.25, 1)}
STYLE_CORPUS_STYLES = tuple(sorted(_STYLE_CORPUS))


def _style_piece(style: str, seed: int):
  """48 quarter notes of `style` at 120 qpm, roots drawn from `seed`."""
  import note_seq
  import numpy as np
  low, length, chord = _STYLE_CORPUS[style]
  rng = np.random.default_rng(seed)
  ns = note_seq.NoteSequence(ticks_per_quarter=220)
  ns.tempos.add(qpm=120.0)
  t = 0.0
  while t < 24.0:
    root = low + int(rng.integers(0, 8))
    for k in range(chord):
      ns.notes.add(pitch=root + 4 * k, velocity=80, start_time=t,
                   end_time=t + length * 0.5)
    t += length * 0.5
  ns.total_time = t
  return ns


@pytest.fixture(scope="session")
def styles_data_dir(tmp_path_factory) -> str:
  """A labelled corpus: three styles (register and rhythm tell them apart) x
  (6 train, 2 valid, 2 test) MIDI pieces, prepared with --labels=folder."""
  import note_seq
  from musegen_jax import prepare as prepare_lib
  root = tmp_path_factory.mktemp("styles")
  seed = 0
  for style in STYLE_CORPUS_STYLES:
    for split, count in (("train", 6), ("valid", 2), ("test", 2)):
      for i in range(count):
        path = root / "midi" / style / split / f"{style}_{i}.mid"
        os.makedirs(path.parent, exist_ok=True)
        note_seq.sequence_proto_to_midi_file(_style_piece(style, seed), str(path))
        seed += 1
  out = str(root / "data")
  prepare_lib.prepare(str(root / "midi"), out, num_workers=0, labels="folder",
                      progress=False)
  return out


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
  rows ("train") or the evaluations ("valid", rows with a "split" key).
  Complete lines only: a live run's log may end in a line being written."""
  with open(os.path.join(str(workdir), "train_log.jsonl"), encoding="utf-8") as f:
    # A line without its newline is still being written by a running process
    # (tests poll the log of a live run); a finished run's lines all have one.
    rows = [json.loads(line) for line in f if line.endswith("\n")]
  return [r for r in rows if r.get("split", "train") == split]

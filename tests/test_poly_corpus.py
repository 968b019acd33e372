"""Issue 27: the piano-roll task on any polyphonic corpus, pieces of any length.

Fixtures are written here: benchmark pickles and .mat files (scipy.io.savemat)
in the distributed layouts, and MIDI files through `prepare`.
"""

from __future__ import annotations

import os
import pickle

import jax
import jax.numpy as jnp
import note_seq
import numpy as np
import pytest
import scipy.io

from musegen_jax import errors
from musegen_jax import evaluate
from musegen_jax import export
from musegen_jax import prepare
from musegen_jax import train
from musegen_jax.data import poly_corpus
from musegen_jax.data.representations import serial_frames
from musegen_jax.tasks import pianoroll

from conftest import load_config

LONG = 4_321  # Frames of the long test piece: more than 4,000.


def _piece(rng: np.random.Generator, frames: int) -> list[list[int]]:
  """Random chords of 0-4 pitches in the piano's middle range."""
  return [sorted({int(p) for p in rng.integers(40, 90, size=rng.integers(0, 5))})
          for _ in range(frames)]


def _corpus(long: int = 0) -> dict[str, list[list[list[int]]]]:
  rng = np.random.default_rng(27)
  return {"train": [_piece(rng, n) for n in (30, 5, 100)],
          "valid": [_piece(rng, n) for n in (30, 7)],
          "test": [_piece(rng, n) for n in ((long,) if long else ()) + (12, 3)]}


def _write_pickle(path, data) -> str:
  with open(path, "wb") as f:
    pickle.dump(data, f, protocol=2)  # The benchmark files are Python 2's.
  return str(path)


def _roll(piece: list[list[int]]) -> np.ndarray:
  roll = np.zeros((len(piece), 88), np.uint8)
  for t, frame in enumerate(piece):
    roll[t, np.asarray(frame, int) - 21] = 1
  return roll


def _write_mat(path, data) -> str:
  cells = {}
  for split, key in poly_corpus.MAT_KEYS.items():
    cell = np.empty((1, len(data[split])), object)
    for i, piece in enumerate(data[split]):
      cell[0, i] = piece.astype(np.float64)
    cells[key] = cell
  scipy.io.savemat(str(path), cells)
  return str(path)


@pytest.fixture(scope="module")
def pickle_file(tmp_path_factory) -> str:
  return _write_pickle(tmp_path_factory.mktemp("pickle") / "Corpus.pickle", _corpus())


def _params(task):
  state = task.init_state(jax.random.PRNGKey(0))
  return jax.tree.map(lambda x: getattr(x, "value", x), state.params,
                      is_leaf=lambda x: hasattr(x, "value"))


# --- Any source of frames -------------------------------------------------

def test_pickle_and_mat_layouts_read_as_the_same_rolls(tmp_path, pickle_file):
  data = _corpus()
  rolls = poly_corpus.read_file(pickle_file)
  for split in poly_corpus.SPLITS:
    assert len(rolls[split]) == len(data[split])
    for piece, roll in zip(data[split], rolls[split]):
      np.testing.assert_array_equal(roll, _roll(piece))
  # Tuples as frames, as some distributed files have them.
  as_tuples = {s: [[tuple(f) for f in p] for p in ps] for s, ps in data.items()}
  tuples = poly_corpus.read_file(_write_pickle(tmp_path / "t.pkl", as_tuples))
  mat = poly_corpus.read_file(_write_mat(
      tmp_path / "c.mat", {s: [_roll(p) for p in ps] for s, ps in data.items()}))
  for split in poly_corpus.SPLITS:
    for a, b, c in zip(rolls[split], tuples[split], mat[split]):
      np.testing.assert_array_equal(a, b)
      np.testing.assert_array_equal(a, c)
  # The task reads them through config.data.dir, the bundled JSB by default.
  assert len(poly_corpus.load_rolls("", "valid")) == 76
  np.testing.assert_array_equal(poly_corpus.load_rolls(pickle_file, "test")[0],
                                _roll(data["test"][0]))


class _Boom:
  """Unpickling this would run os.system; the reader must refuse it."""

  def __reduce__(self):
    return (os.system, ("touch /tmp/musegen_poly_corpus_pwned",))


@pytest.mark.parametrize("change,match", [
    (lambda d: d["train"][1][2].append(20),
     r"Corpus.pickle, split 'train', piece 1, frame 2: pitch 20 is outside the 88"),
    (lambda d: d["valid"][0][4].append(109), r"split 'valid', piece 0, frame 4: pitch 109"),
    (lambda d: d["test"].insert(1, []), r"split 'test', piece 1: empty piece"),
    (lambda d: d.pop("valid"), r"no split 'valid'"),
    (lambda d: d["train"][0][3].append(60.0), r"piece 0, frame 3: pitch 60.0 is a float"),
    (lambda d: d["train"][0][3].append(True), r"piece 0, frame 3: pitch True is a bool"),
    (lambda d: d["train"][2].__setitem__(7, "C4"), r"piece 2, frame 7: a frame must be"),
    (lambda d: d["train"].__setitem__(0, {60: 1}), r"piece 0: a piece must be a list"),
    (lambda d: d["train"][0][0].append(np.int64(60)), r"refused to load numpy"),
    (lambda d: d["train"][0][0].append(_Boom()), r"refused to load (posix|os)"),
])
def test_bad_pickles_are_one_line_errors_naming_the_place(tmp_path, change, match):
  data = _corpus()
  change(data)
  path = _write_pickle(tmp_path / "Corpus.pickle", data)
  with pytest.raises(errors.UserError, match=match) as raised:
    poly_corpus.read_file(path)
  assert "\n" not in str(raised.value)
  assert not os.path.exists("/tmp/musegen_poly_corpus_pwned")
  # prepare checks the file before it touches its output.
  with pytest.raises(errors.UserError, match=match):
    prepare.prepare(path, str(tmp_path / "out"), num_workers=0, progress=False)
  assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("change,match", [
    (lambda d: d["train"].__setitem__(1, np.ones((4, 87))),
     r"split 'traindata', piece 1: a piece must be a \[frames, 88\] 0/1 matrix"),
    (lambda d: d["valid"][0].__setitem__((3, 10), 2.0),
     r"split 'validdata', piece 0, frame 3: values \[2.0\]"),
    (lambda d: d["test"].__setitem__(0, np.zeros((0, 88))), r"piece 0: .*"),
    (lambda d: d.pop("test"), r"no split 'testdata'"),
])
def test_bad_mat_files_are_one_line_errors_naming_the_place(tmp_path, change, match):
  data = {s: [_roll(p).astype(np.float64) for p in ps] for s, ps in _corpus().items()}
  change(data)
  cells = {}
  for split, key in poly_corpus.MAT_KEYS.items():
    if split in data:
      cell = np.empty((1, len(data[split])), object)
      for i, piece in enumerate(data[split]):
        cell[0, i] = piece
      cells[key] = cell
  path = str(tmp_path / "Corpus.mat")
  scipy.io.savemat(path, cells)
  with pytest.raises(errors.UserError, match=match):
    poly_corpus.read_file(path)


def test_prepare_keeps_the_split_and_the_frames(tmp_path, pickle_file):
  data = poly_corpus.read_file(pickle_file)
  mat = _write_mat(tmp_path / "Corpus.mat", data)
  for source, steps in ((pickle_file, 1), (mat, 4)):
    out = str(tmp_path / f"prepared_{steps}")
    metadata = prepare.prepare(source, out, num_workers=0, progress=False,
                               steps_per_quarter=steps)
    assert {s: m["num_sequences"] for s, m in metadata["splits"].items()} == {
        s: len(r) for s, r in data.items()}
    assert metadata["settings"]["steps_per_quarter"] == steps
    for split in poly_corpus.SPLITS:
      back = poly_corpus.load_rolls(out, split, steps_per_quarter=steps)
      # Shards may hold the pieces in another order: compare as a set.
      assert sorted(r.tobytes() for r in back) == sorted(r.tobytes() for r in data[split])


def test_midi_files_through_prepare_become_frames(tmp_path):
  """Notes at 2 steps per quarter (120 qpm), one file per split."""
  expected = {}
  for k, split in enumerate(poly_corpus.SPLITS):
    ns = note_seq.NoteSequence(ticks_per_quarter=220)
    ns.tempos.add(time=0.0, qpm=120.0)
    # C major triad over steps 0-3, a held G over 2-7, a rest, then A.
    for pitch, start, end in ((60 + k, 0, 4), (64, 0, 4), (67, 2, 8), (69, 10, 11)):
      ns.notes.add(pitch=pitch, start_time=start * 0.25, end_time=end * 0.25,
                   velocity=80)
    ns.total_time = 11 * 0.25
    os.makedirs(tmp_path / "midi" / split)
    note_seq.sequence_proto_to_midi_file(ns, str(tmp_path / "midi" / split / "a.mid"))
    roll = np.zeros((11, 88), np.uint8)
    for note in ns.notes:
      roll[round(note.start_time * 4):round(note.end_time * 4), note.pitch - 21] = 1
    expected[split] = roll
  prepare.prepare(str(tmp_path / "midi"), str(tmp_path / "data"), num_workers=0,
                  progress=False)
  for split in poly_corpus.SPLITS:
    [roll] = poly_corpus.load_rolls(str(tmp_path / "data"), split, steps_per_quarter=2)
    np.testing.assert_array_equal(roll, expected[split])
    # A fixed frame rate (performances): 4 frames a second are 0.25 s steps,
    # here the same as 2 steps a quarter at 120 qpm; 8 a second split each.
    [roll] = poly_corpus.load_rolls(str(tmp_path / "data"), split, frames_per_second=4)
    np.testing.assert_array_equal(roll, expected[split])
    [roll] = poly_corpus.load_rolls(str(tmp_path / "data"), split, steps_per_quarter=2,
                                    frames_per_second=8)
    np.testing.assert_array_equal(roll, np.repeat(expected[split], 2, axis=0))


# --- Pieces of any length -------------------------------------------------

def _naive_sums(task, params, batch) -> dict[str, float]:
  """One causal pass over the whole batch (no windows)."""
  if task.serial:
    logits, _ = task.model.apply({"params": params}, batch["tokens"][:, :-1])
    return pianoroll.serial_nll_sums(logits, batch["tokens"])
  logits, _ = task.model.apply({"params": params},
                               pianoroll.shift_right(batch["frames"]))
  return pianoroll.frame_nll_sums(logits, batch["frames"], batch["mask"])


@pytest.mark.usefixtures("fewer_optimizations")
@pytest.mark.parametrize("name,overrides", [
    ("poly_lstm", {}),
    ("poly_gru", {}),
    # Relative attention without absolute positions: a window's context
    # (its receptive field, 1 frame per layer here) gives the full history.
    ("poly_transformer", {"model__position_encoding": "none", "model__max_len": 64}),
    ("poly_lstm_serial", {"data__max_tokens": 12}),
])
def test_whole_piece_evaluation_equals_the_naive_per_frame_sum(pickle_file, name,
                                                               overrides):
  config = load_config(name, data__dir=pickle_file, data__max_frames=8,
                       batch_size=2, **overrides)
  task = pianoroll.PianorollTask(config, None)
  params = _params(task)
  eval_data = task.eval_data("", "valid")  # 30 and 7 frames: several windows.
  [batch] = list(task.eval_batches(eval_data))
  window, context = pianoroll.eval_windows(config)
  assert (batch["tokens"].shape[1] - 1 if task.serial else batch["frames"].shape[1]
          ) > window
  sums = jax.jit(task.eval_step)(params, batch)
  naive = _naive_sums(task, params, batch)
  np.testing.assert_allclose(float(sums["nll_sum"]), float(naive["nll_sum"]),
                             rtol=2e-6)
  assert float(sums["frame_sum"]) == 37
  # The log-probabilities an ensemble averages cover the same positions.
  log_probs = jax.jit(task.eval_log_probs)(params, batch)
  np.testing.assert_allclose(float(task.log_prob_sums(log_probs, batch)["nll_sum"]),
                             float(naive["nll_sum"]), rtol=2e-6)


@pytest.mark.usefixtures("fewer_optimizations")
def test_a_long_piece_is_evaluated_whole_in_bounded_memory(tmp_path):
  data = _corpus()
  rng = np.random.default_rng(4000)
  # Ten short test pieces, the long one among them.
  data["test"] = [_piece(rng, n) for n in (12, 3, 9, 4, 7, 5, 6, 8, 10, 11)]
  data["test"].insert(3, _piece(rng, LONG))
  path = _write_pickle(tmp_path / "Long.pickle", data)
  config = load_config("poly_lstm", data__dir=path, data__max_frames=64, batch_size=8)
  task = pianoroll.PianorollTask(config, None)
  params = _params(task)
  eval_data = task.eval_data("", "test")
  # 4,321 frames: 68 windows of 64, padded to 128 windows.
  assert eval_data["frames"].shape == (11, 128 * 64, 88)
  batches = list(task.eval_batches(eval_data))
  # Longest first; the second batch is cut to one window.
  assert [b["frames"].shape[1] for b in batches] == [128 * 64, 64]
  mesh = train.create_mesh(config)
  _, eval_step = train.jit_steps(task, mesh)
  result = train.evaluate(eval_step, task, params, eval_data, mesh, -1)
  assert result["frames"] == LONG + 75
  assert 0 < result["nll"] < 88 * np.log(2) + 1

  # The compiled evaluation's scratch memory grows with a piece's length by
  # about its uint8 frames; one pass over the whole piece needs its float
  # activations (many times more).
  def temp_bytes(fn, length):
    spec = {"frames": jax.ShapeDtypeStruct((2, length, 88), jnp.uint8),
            "mask": jax.ShapeDtypeStruct((2, length), jnp.uint8)}
    return jax.jit(fn).lower(params, spec).compile().memory_analysis().temp_size_in_bytes

  naive = lambda p, b: _naive_sums(task, p, b)
  short, long = 64, 128 * 64
  windowed_growth = temp_bytes(task.eval_step, long) - temp_bytes(task.eval_step, short)
  naive_growth = temp_bytes(naive, long) - temp_bytes(naive, short)
  assert windowed_growth <= 2 * (long - short) * 88 * 2
  assert windowed_growth * 4 < naive_growth


def test_long_pieces_train_as_seeded_windows(pickle_file):
  config = load_config("poly_lstm", data__dir=pickle_file, data__max_frames=16,
                       batch_size=4)
  task = pianoroll.PianorollTask(config, None)
  rolls = poly_corpus.read_file(pickle_file)["train"]  # 30, 5 and 100 frames.
  it = iter(task.create_train_dataset(""))
  first = next(it)
  state = it.get_state()
  batches = [next(it) for _ in range(4)]
  assert first["frames"].shape == (4, 16, 88) and first["mask"].shape == (4, 16)
  for batch in [first] + batches:
    for frames, mask in zip(batch["frames"], batch["mask"]):
      n = int(mask.sum())
      assert n == 16 or n == 5  # A window, or the short piece whole.
      # Each row is a run of consecutive frames of one piece.
      assert any(np.array_equal(frames[:n], r[s:s + n]) for r in rolls
                 for s in range(len(r) - n + 1))
  # 2 + 1 + 7 entries an epoch; the checkpointed iterator resumes exactly.
  assert pianoroll.RandomPieceWindow(rolls, 16, False).entries.tolist() == (
      [0, 0, 1] + [2] * 7)
  it.set_state(state)
  for batch in batches:
    np.testing.assert_array_equal(next(it)["frames"], batch["frames"])

  serial = load_config("poly_lstm_serial", data__dir=pickle_file, data__max_tokens=20,
                       batch_size=4)
  batch = next(iter(pianoroll.PianorollTask(serial, None).create_train_dataset("")))
  assert batch["tokens"].shape == (4, 20)
  # Windows start at a frame boundary.
  assert set(batch["tokens"][:, 0].tolist()) <= {serial_frames.START_ID,
                                                 serial_frames.EOF_ID}


@pytest.mark.slow
def test_train_export_evaluate_on_a_benchmark_pickle(tmp_path, pickle_file):
  config = load_config("poly_lstm", data__dir=pickle_file, data__max_frames=16,
                       batch_size=8, num_train_steps=2, eval_every_steps=2,
                       checkpoint_every_steps=2, sample_every_steps=0)
  state = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert int(state.step) == 2
  export.export(str(tmp_path / "run"), str(tmp_path / "bundle"), "best")
  result = evaluate.evaluate(str(tmp_path / "bundle"), split="test")
  assert result["frames"] == 12 + 3
  assert 0 < result["nll"] < 88 * np.log(2) + 1


# --- Dataset-neutral configs ----------------------------------------------

@pytest.mark.parametrize("jsb,poly", [("jsb_lstm", "poly_lstm"), ("jsb_gru", "poly_gru"),
                                      ("jsb_transformer", "poly_transformer"),
                                      ("jsb_lstm_serial", "poly_lstm_serial")])
def test_jsb_configs_are_the_poly_configs_on_the_bundled_data(jsb, poly):
  for variant in (None, "smoke"):
    assert load_config(jsb, variant).to_dict() == load_config(poly, variant).to_dict()
  config = load_config(jsb, None)
  assert config.data.dir == ""
  # One evaluation window holds any JSB piece (160 frames, 788 tokens);
  # the Transformer's 8 layers of window 2 read 8 frames of context.
  assert pianoroll.eval_windows(config) == {
      "jsb_lstm": (160, 0), "jsb_gru": (160, 0), "jsb_transformer": (160, 8),
      "jsb_lstm_serial": (787, 0)}[jsb]

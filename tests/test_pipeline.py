"""The grain pipeline: shapes, determinism and mid-epoch resume."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from musegen_jax.data import pipeline
from musegen_jax.data import representations
from musegen_jax.data import shards

from conftest import log_rows


def _dataset(data_dir, seed=0, num_workers=0, batch=4, seq_len=32):
  rep = representations.get_representation("performance")
  return pipeline.create_train_dataset(
      data_dir, rep, seq_len=seq_len, global_batch_size=batch, seed=seed,
      num_workers=num_workers)


def _take(it, n):
  return [next(it)["tokens"] for _ in range(n)]


def test_batches_have_the_model_shape_and_real_tokens(jsb_data_dir):
  batch = next(iter(_dataset(jsb_data_dir, batch=8, seq_len=48)))
  tokens = batch["tokens"]
  assert tokens.shape == (8, 49) and tokens.dtype == np.int32
  assert tokens.min() >= 0 and tokens.max() < 390
  # Real chorales are far longer than 49 tokens: crops are full of events.
  assert (tokens != 0).mean() > 0.9
  # Rows differ: the shuffle and the crops are not degenerate.
  assert len({row.tobytes() for row in tokens}) == 8


def test_same_seed_same_batches_other_seed_other_batches(jsb_data_dir):
  a = _take(iter(_dataset(jsb_data_dir, seed=3)), 4)
  b = _take(iter(_dataset(jsb_data_dir, seed=3)), 4)
  c = _take(iter(_dataset(jsb_data_dir, seed=4)), 4)
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  assert not np.array_equal(np.stack(a), np.stack(c))


def test_resume_mid_epoch_gives_the_same_batches(jsb_data_dir, tmp_path):
  it = iter(_dataset(jsb_data_dir))
  _take(it, 5)  # 20 of 229 train chorales: mid-epoch.
  state = it.get_state()
  expected = _take(it, 6)
  # Through an orbax checkpoint, as train.py saves it.
  with ocp.CheckpointManager(
      str(tmp_path / "ckpt"), item_names=("data",),
      item_handlers={"data": grain.checkpoint.CheckpointHandler()}) as manager:
    it2 = iter(_dataset(jsb_data_dir))
    it2.set_state(state)
    manager.save(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it2)))
    manager.wait_until_finished()
    fresh = iter(_dataset(jsb_data_dir))
    manager.restore(1, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(fresh)))
  np.testing.assert_array_equal(np.stack(_take(fresh, 6)), np.stack(expected))


def test_resume_with_worker_processes(jsb_data_dir):
  it = iter(_dataset(jsb_data_dir, num_workers=2))
  first = _take(it, 3)
  state = it.get_state()
  expected = _take(it, 3)
  resumed = iter(_dataset(jsb_data_dir, num_workers=2))
  resumed.set_state(state)
  np.testing.assert_array_equal(np.stack(_take(resumed, 3)), np.stack(expected))
  # Each worker batches its own slice of the dataset, so the order depends on
  # num_workers (documented), but the batches are real, distinct crops.
  rows = np.concatenate(first + expected)
  assert rows.shape == (24, 33) and (rows != 0).mean() > 0.9
  assert len({row.tobytes() for row in rows}) == 24
  del it, resumed


# A trainer with two grain workers, run in its own interpreter: the
# resource tracker that reports leaked shared memory belongs to it.
_WORKER_SCRIPT = """
import json, multiprocessing, sys, time
from musegen_jax.data import pipeline, representations

def main():
  ds = pipeline.create_train_dataset(
      sys.argv[1], representations.get_representation("performance"), seq_len=32,
      global_batch_size=4, seed=0, num_workers=2)
  it = iter(ds)
  for _ in range(5):
    next(it)
  workers = multiprocessing.active_children()
  print(json.dumps([w.pid for w in workers]), flush=True)
  if sys.argv[2] == "wait":
    time.sleep(600)
  it.close()
  print(json.dumps([w.exitcode for w in workers]), flush=True)

if __name__ == "__main__":
  main()
"""


def _start_trainer(tmp_path, data_dir, mode):
  script = tmp_path / "trainer.py"
  script.write_text(_WORKER_SCRIPT)
  return subprocess.Popen([sys.executable, str(script), data_dir, mode],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_closing_the_iterator_ends_workers_cleanly_and_frees_their_memory(
    jsb_data_dir, tmp_path):
  proc = _start_trainer(tmp_path, jsb_data_dir, "close")
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  pids, exitcodes = (json.loads(line) for line in out.splitlines())
  assert len(pids) == 2
  # Each worker finished its own shutdown: none was killed by a signal in
  # the middle of it (a negative exit code), so none left the batch it was
  # handing over in shared memory.
  assert exitcodes == [0, 0], exitcodes
  assert "leaked shared_memory" not in err, err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_trainer_is_killed(jsb_data_dir, tmp_path):
  proc = _start_trainer(tmp_path, jsb_data_dir, "wait")
  try:
    ready, _, _ = select.select([proc.stdout], [], [], 300)
    assert ready, "the trainer printed no worker pids in 300 s"
    pids = json.loads(proc.stdout.readline())
    assert len(pids) == 2, proc.stderr.read()
    assert all(_running(pid) for pid in pids)
  finally:
    proc.kill()  # SIGKILL to the trainer alone, not to its process group.
    proc.communicate()
  deadline = time.monotonic() + 60
  while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
    time.sleep(0.2)
  assert not any(_running(pid) for pid in pids), pids


def _running(pid: int) -> bool:
  """Alive and not a zombie (an exited orphan waits there for init)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      state = f.read().rsplit(")", 1)[1].split()[0]
  except FileNotFoundError:
    return False
  return state not in ("Z", "X")


def test_eval_windows_cover_every_valid_token_once(jsb_data_dir):
  rep = representations.get_representation("performance")
  seq_len = 64
  windows = pipeline.eval_windows(jsb_data_dir, rep, seq_len=seq_len)
  total = sum(len(pipeline.encode_with_boundary(rep, ns)) - 1
              for ns in shards.read_note_sequences(
                  shards.split_paths(jsb_data_dir, "valid")))
  # Every target (window[1:]) that is not padding is one token of a piece.
  assert int((windows[:, 1:] != rep.pad_id).sum()) == total
  batches = list(pipeline.eval_batches(windows, 16, rep.pad_id))
  assert all(b["tokens"].shape == (16, seq_len + 1) for b in batches)
  assert len(batches) == -(-len(windows) // 16)


def _dataset_with_a_bad_record(data_dir, tmp_path):
  """Ten real chorales in two shards, the 4th record of shard 1 garbled."""
  records = list(shards.read_records(shards.split_paths(data_dir, "train")))[:10]
  records[7] = b"\xff\xff\xff\xff not a NoteSequence"
  out = str(tmp_path / "bad")
  os.makedirs(out)
  shards.write_split(records, out, "train", 2)
  valid = list(shards.read_records(shards.split_paths(data_dir, "valid")))[:4]
  shards.write_split(valid, out, "valid", 1)
  shards.write_metadata(out, shards.read_metadata(data_dir))
  return out


def test_a_garbled_record_is_named_by_shard_and_index_or_skipped(jsb_data_dir, tmp_path):
  out = _dataset_with_a_bad_record(jsb_data_dir, tmp_path)
  paths = shards.split_paths(out, "train")
  assert len(paths) == 2
  rep = representations.get_representation("performance")
  kwargs = dict(seq_len=16, global_batch_size=2, seed=0, num_workers=0)
  with pytest.raises(pipeline.BadRecordError,
                     match=re.escape(paths[1]) + r" record 2: DecodeError"):
    _take(iter(pipeline.create_train_dataset(out, rep, **kwargs)), 10)
  it = iter(pipeline.create_train_dataset(out, rep, on_bad_record="skip", **kwargs))
  batches = [next(it) for _ in range(15)]  # Three epochs of the 10 records.
  rows = np.concatenate([b["tokens"] for b in batches])
  assert rows.shape == (30, 17) and (rows != 0).mean() > 0.9
  # The bad record's place went to the next good one, and was counted: once
  # an epoch.
  counts = np.concatenate([b["bad_records"] for b in batches])
  assert sorted(set(counts.tolist())) == [0, 1] and counts.sum() == 3


def test_the_loop_counts_skipped_bad_records(jsb_data_dir, tmp_path):
  from musegen_jax import train
  from conftest import tiny_lstm_config
  out = _dataset_with_a_bad_record(jsb_data_dir, tmp_path)
  config = tiny_lstm_config(data__dir=out, data__bad_records="skip",
                            batch_size=8, num_train_steps=5, log_every_steps=1)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  counts = [r["train/bad_records"] for r in log_rows(tmp_path / "run")]
  # 40 elements = 4 epochs of 10 records, each with the bad one once.
  assert len(counts) == 5 and sum(counts) == 4


class _CountingDecode:
  def __init__(self):
    self.calls = 0

  def __call__(self, record: bytes) -> np.ndarray:
    self.calls += 1
    return np.frombuffer(record, np.uint8).astype(np.int32)


def test_decode_record_cache_decodes_each_record_once(monkeypatch):
  records = [bytes([i, i + 1, i + 2]) for i in range(4)]
  decode = _CountingDecode()
  cached = pipeline.DecodeRecord(records, decode, cache=True)
  first = [cached.map(i)["value"] for i in range(4)]
  again = [cached.map(i)["value"] for i in (3, 2, 1, 0)]
  assert decode.calls == 4
  for i in range(4):
    np.testing.assert_array_equal(again[3 - i], [i, i + 1, i + 2])
    assert again[3 - i] is first[i] and not first[i].flags.writeable
  # Another transform (another dataset) has its own entries.
  other = pipeline.DecodeRecord(records, decode, cache=True)
  other.map(0)
  assert decode.calls == 5
  # Uncached, and a full cache, decode every time.
  plain = pipeline.DecodeRecord(records, decode)
  plain.map(0), plain.map(0)
  assert decode.calls == 7
  monkeypatch.setattr(pipeline, "CACHE_BYTES", 0)
  full = pipeline.DecodeRecord(records, decode, cache=True)
  full.map(1), full.map(1)
  assert decode.calls == 9
  assert full.map(1)["value"].flags.writeable

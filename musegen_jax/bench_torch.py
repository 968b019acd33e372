r"""Eager PyTorch reference for the LSTM train benchmark (not a dependency).

    python -m musegen_jax.bench_torch --bench=lstm

Times the same model and update as `python -m musegen_jax.bench --bench=train`
(vocab 390, embedding 256, 3 LSTM layers of 512 with dropout 0.1, batch 32,
sequence 128, float32, cross-entropy on every position, AdamW, gradient
clipping at 1.0) in eager PyTorch with its fused CPU LSTM, and prints one JSON
line with the same keys. PyTorch is imported only here; install it by hand to
compare (`pip install torch`).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app
from absl import flags

from musegen_jax.bench_common import TRAIN_SHAPE, cpu_model, peak_rss_mb
from musegen_jax.models import lstm as lstm_model

FLAGS = flags.FLAGS
flags.DEFINE_enum("bench", "lstm", ["lstm"], "Which reference model to time.")
flags.DEFINE_integer("steps", 20, "Timed steps (after warm-up).")
flags.DEFINE_integer("warmup", 3, "Untimed steps first.")
flags.DEFINE_integer("threads", 2, "torch.set_num_threads.")
flags.DEFINE_integer("roof_size", 2048, "Side of the float32 matmul timed as the roof.")

def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise SystemExit(
        "bench_torch needs PyTorch, which musegen_jax does not depend on: "
        "install it into this environment first, e.g. `pip install torch` "
        f"({e})") from e
  return torch


def measure_torch_roof(torch, size: int, repeats: int = 10) -> float:
  """GFLOP/s of a [size, size] @ [size, size] float32 matmul in PyTorch."""
  a = torch.randn(size, size)
  b = torch.randn(size, size)
  for _ in range(2):
    a @ b
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - t0)
  return 2 * size**3 / float(np.median(times)) / 1e9


def bench_lstm(torch) -> dict:
  """Times AdamW steps of the reference LSTM language model."""
  shape = TRAIN_SHAPE
  vocab, embed, hidden = shape["vocab_size"], shape["embed_dim"], shape["hidden_size"]
  layers, batch, seq_len = shape["num_layers"], shape["batch_size"], shape["seq_len"]
  dropout = shape["dropout_rate"]
  nn = torch.nn
  torch.manual_seed(0)

  class Model(nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(vocab, embed)
      self.drop = nn.Dropout(dropout)
      self.lstm = nn.LSTM(embed, hidden, num_layers=layers, dropout=dropout,
                          batch_first=True)
      self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens):
      x, _ = self.lstm(self.drop(self.embed(tokens)))
      return self.head(self.drop(x))

  model = Model().train()
  opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.98),
                          weight_decay=0.01)
  loss_fn = nn.CrossEntropyLoss()
  gen = torch.Generator().manual_seed(0)
  batches = [torch.randint(2, vocab, (batch, seq_len + 1), generator=gen)
             for _ in range(4)]

  def step(tokens):
    logits = model(tokens[:, :-1])
    loss = loss_fn(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()

  t0 = time.perf_counter()
  step(batches[0])
  first_step_s = time.perf_counter() - t0
  for i in range(FLAGS.warmup):
    step(batches[i % len(batches)])
  times = []
  for i in range(FLAGS.steps):
    t0 = time.perf_counter()
    step(batches[i % len(batches)])
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  flops = lstm_model.train_matmul_flops(**{k: shape[k] for k in (
      "vocab_size", "embed_dim", "hidden_size", "num_layers", "batch_size",
      "seq_len")})
  roof = measure_torch_roof(torch, FLAGS.roof_size)
  return {
      "bench": "torch_lstm_train",
      **shape,
      "dtype": "float32",
      "device": f"cpu ({cpu_model()}, {os.cpu_count()} cores), "
                f"torch {torch.__version__}, {torch.get_num_threads()} threads",
      "examples_per_sec": round(batch / step_s, 2),
      "tokens_per_sec": round(batch * seq_len / step_s, 1),
      "step_ms": round(step_s * 1e3, 1),
      "step_ms_min": round(min(times) * 1e3, 1),
      "steps": FLAGS.steps,
      "compile_s": round(first_step_s, 3),
      "compile_note": "eager: no compile; compile_s is the first step's time",
      "peak_rss_mb": peak_rss_mb(),
      "flops_per_step": flops,
      "flops_source": "analytic (matmuls only, 3x forward)",
      "gflops_per_sec": round(flops / step_s / 1e9, 1),
      "roof_gflops": round(roof, 1),
      "roof_source": f"torch float32 {FLAGS.roof_size}^3 matmul",
      "mfu": round(flops / step_s / 1e9 / roof, 3),
      "env": {k: os.environ[k] for k in ("GLIBC_TUNABLES",) if k in os.environ},
  }


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  torch = _import_torch()
  torch.set_num_threads(FLAGS.threads)
  print(json.dumps(bench_lstm(torch)), flush=True)


if __name__ == "__main__":
  app.run(main)

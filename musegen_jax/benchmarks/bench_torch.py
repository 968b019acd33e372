r"""Eager PyTorch references for the train benchmarks (not a dependency).

    python -m musegen_jax.bench_torch --bench=lstm
    python -m musegen_jax.bench_torch --bench=wavegan
    python -m musegen_jax.bench_torch --bench=transformer
    python -m musegen_jax.bench_torch --bench=bigru

Times the same model and update as `python -m musegen_jax.bench --bench=train`
(vocab 390, embedding 256, 3 LSTM layers of 512 with dropout 0.1, batch 32,
sequence 128, float32, cross-entropy on every position, AdamW, gradient
clipping at 1.0) in eager PyTorch with its fused CPU LSTM, and prints one JSON
line with the same keys. `--bench=wavegan` times WaveGAN WGAN-GP steps (see
`bench_wavegan`); `--bench=transformer` a decoder-only Transformer LM (see
`bench_transformer`); `--bench=bigru` the bidirectional GRU next-token
model (see `bench_bigru`). `--matmul_dtype=bfloat16` runs a token model's
forward and loss under `torch.autocast("cpu", torch.bfloat16)`, PyTorch's
mixed precision, to compare with `bench --matmul_dtype=bfloat16`. PyTorch is imported only here; install it by hand to
compare (`pip install torch`).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app
from absl import flags

from musegen_jax import flops as flops_lib
from musegen_jax import runtime
from musegen_jax.benchmarks.common import (BIGRU_TRAIN_SHAPE, TRAIN_SHAPE,
                                           TRANSFORMER_TRAIN_SHAPE)
from musegen_jax.benchmarks.common import cpu_model, peak_rss_mb

FLAGS = flags.FLAGS
flags.DEFINE_enum("bench", "lstm", ["lstm", "wavegan", "transformer", "bigru"],
                  "Which reference model to time.")
flags.DEFINE_integer("steps", 20, "Timed steps (after warm-up).")
flags.DEFINE_integer("warmup", 3, "Untimed steps first.")
flags.DEFINE_integer("threads", 2, "torch.set_num_threads.")
flags.DEFINE_integer("roof_size", 2048, "Side of the matmul timed as the roof.")
flags.DEFINE_enum("matmul_dtype", "float32", ["float32", "bfloat16"],
                  "bfloat16: forward and loss under torch.autocast (CPU, "
                  "bfloat16), PyTorch's mixed precision; parameters, "
                  "gradients and optimizer stay float32.")

# The WaveGAN train benchmark: WGAN-GP with 5 critic updates per generator
# update, Adam(1e-4, 0.5, 0.9), as in the WaveGAN paper, at d = 32.
WAVEGAN_SHAPE = {"dim": 32, "slice_len": 16384, "batch_size": 16,
                 "latent_dim": 100, "kernel_size": 25, "phase_shuffle": 2,
                 "critic_steps": 5, "gp_weight": 10.0}

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
  """GFLOP/s of a [size, size] @ [size, size] matmul in PyTorch, in
  --matmul_dtype."""
  dtype = getattr(torch, FLAGS.matmul_dtype)
  a = torch.randn(size, size, dtype=dtype)
  b = torch.randn(size, size, dtype=dtype)
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

  step_s, first_step_s, times = _time_lm_steps(
      torch, Model(), lr=2e-3, vocab=vocab, batch=batch, length=seq_len + 1,
      last_only=False)
  flops = flops_lib.lstm_train_flops(**{k: shape[k] for k in (
      "vocab_size", "embed_dim", "hidden_size", "num_layers", "batch_size",
      "seq_len")})
  return _record(
      torch, "torch_lstm_train", shape, step_s, first_step_s, times,
      batch=batch, tokens=batch * seq_len, flops=flops,
      flops_source="analytic (matmuls only, 3x forward)")


def bench_wavegan(torch) -> dict:
  """Times WGAN-GP steps of an eager PyTorch WaveGAN.

  One step: `critic_steps` discriminator updates (each with fresh latents; the
  real batch is a fixed random tensor in [-1, 1]; loss mean D(fake) - mean
  D(real) + gp_weight * gradient penalty on random interpolates), then one
  generator update. Stride-4 convolutions with padding 11 (and output
  padding 1 when transposed) keep the lengths of the 'SAME' convolutions in
  musegen_jax.models.wavegan.
  """
  shape = WAVEGAN_SHAPE
  dim, slice_len, batch = shape["dim"], shape["slice_len"], shape["batch_size"]
  latent, k, shuffle = shape["latent_dim"], shape["kernel_size"], shape["phase_shuffle"]
  nn = torch.nn
  functional = torch.nn.functional
  torch.manual_seed(0)
  pad = (k - 4 + 1) // 2  # 11: length / 4 out, as 'SAME' padding.

  class Generator(nn.Module):
    def __init__(self):
      super().__init__()
      self.fc = nn.Linear(latent, 16 * 16 * dim)
      chans = [16 * dim, 8 * dim, 4 * dim, 2 * dim, dim, 1]
      self.convs = nn.ModuleList(
          nn.ConvTranspose1d(a, b, k, stride=4, padding=pad, output_padding=1)
          for a, b in zip(chans[:-1], chans[1:]))

    def forward(self, z):
      x = self.fc(z).view(-1, 16 * dim, 16)
      for conv in self.convs:
        x = conv(functional.relu(x))
      return torch.tanh(x)

  def phase_shuffle(x):
    """Per-example shift in [-shuffle, shuffle], reflection padding."""
    length = x.shape[-1]
    shifts = torch.randint(-shuffle, shuffle + 1, (x.shape[0], 1, 1))
    padded = functional.pad(x, (shuffle, shuffle), mode="reflect")
    index = torch.arange(length).view(1, 1, -1) + shuffle - shifts
    return padded.gather(2, index.expand(-1, x.shape[1], -1))

  class Discriminator(nn.Module):
    def __init__(self):
      super().__init__()
      chans = [1, dim, 2 * dim, 4 * dim, 8 * dim, 16 * dim]
      self.convs = nn.ModuleList(
          nn.Conv1d(a, b, k, stride=4, padding=pad)
          for a, b in zip(chans[:-1], chans[1:]))
      self.fc = nn.Linear(16 * 16 * dim, 1)

    def forward(self, x):
      for i, conv in enumerate(self.convs):
        x = functional.leaky_relu(conv(x), 0.2)
        if i < len(self.convs) - 1:
          x = phase_shuffle(x)
      return self.fc(x.flatten(1))[:, 0]

  gen, disc = Generator(), Discriminator()
  opt_g = torch.optim.Adam(gen.parameters(), lr=1e-4, betas=(0.5, 0.9))
  opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.5, 0.9))
  real = torch.rand(batch, 1, slice_len) * 2 - 1

  def critic_step():
    with torch.no_grad():
      fake = gen(torch.rand(batch, latent) * 2 - 1)
    alpha = torch.rand(batch, 1, 1)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(disc(mixed).sum(), mixed, create_graph=True)
    penalty = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    loss = disc(fake).mean() - disc(real).mean() + shape["gp_weight"] * penalty
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return loss

  def step():
    for _ in range(shape["critic_steps"]):
      d_loss = critic_step()
    for p in disc.parameters():
      p.requires_grad_(False)
    g_loss = -disc(gen(torch.rand(batch, latent) * 2 - 1)).mean()
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    for p in disc.parameters():
      p.requires_grad_(True)
    return d_loss.item(), g_loss.item()

  step_s, first_step_s, times = _time_steps(lambda _: step(), [None])
  flops = flops_lib.wavegan_train_flops(dim, slice_len, batch, shape["critic_steps"],
                                    latent_dim=latent, kernel_size=k)
  return _record(
      torch, "torch_wavegan_train", shape, step_s, first_step_s, times,
      # examples: clips the generator is trained on, one batch per step.
      batch=batch, tokens=None, flops=flops,
      flops_source="analytic (flops_lib.wavegan_train_flops: conv/dense MACs, "
                   "fwd+bwd = 3x fwd, GP double backward = 1 more D fwd+bwd)")


def bench_transformer(torch) -> dict:
  """Times AdamW steps of an eager PyTorch decoder-only Transformer LM.

  The shape of `musegen_jax.models.transformer` with attention="absolute",
  position_encoding="learned": token + learned position embeddings, dropout,
  pre-LayerNorm blocks (fused QKV projection, `scaled_dot_product_attention`
  with is_causal=True and no attention dropout, tanh-GELU MLP, dropout on
  each residual branch), final LayerNorm, untied head; cross-entropy on
  every position, AdamW, gradient clipping at 1.0.
  """
  shape = TRANSFORMER_TRAIN_SHAPE
  vocab, dim, layers = shape["vocab_size"], shape["d_model"], shape["num_layers"]
  heads, mlp_dim = shape["num_heads"], shape["mlp_dim"]
  batch, seq_len, dropout = shape["batch_size"], shape["seq_len"], shape["dropout_rate"]
  nn = torch.nn
  functional = torch.nn.functional
  torch.manual_seed(0)

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.ln_attention = nn.LayerNorm(dim)
      self.qkv = nn.Linear(dim, 3 * dim)
      self.out = nn.Linear(dim, dim)
      self.ln_mlp = nn.LayerNorm(dim)
      self.wi = nn.Linear(dim, mlp_dim)
      self.wo = nn.Linear(mlp_dim, dim)
      self.drop = nn.Dropout(dropout)

    def forward(self, x):
      b, t, _ = x.shape
      q, k, v = self.qkv(self.ln_attention(x)).view(
          b, t, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
      y = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
      x = x + self.drop(self.out(y.transpose(1, 2).reshape(b, t, dim)))
      h = functional.gelu(self.wi(self.ln_mlp(x)), approximate="tanh")
      return x + self.drop(self.wo(h))

  class Model(nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(vocab, dim)
      self.positions = nn.Parameter(torch.randn(seq_len, dim) * 0.02)
      self.drop = nn.Dropout(dropout)
      self.blocks = nn.ModuleList(Block() for _ in range(layers))
      self.ln_final = nn.LayerNorm(dim)
      self.head = nn.Linear(dim, vocab)

    def forward(self, tokens):
      x = self.drop(self.embed(tokens) + self.positions[:tokens.shape[1]])
      for block in self.blocks:
        x = block(x)
      return self.head(self.ln_final(x))

  step_s, first_step_s, times = _time_lm_steps(
      torch, Model(), lr=5e-4, vocab=vocab, batch=batch, length=seq_len + 1,
      last_only=False)
  flops = flops_lib.transformer_train_flops(
      attention="absolute", **{k: shape[k] for k in (
          "vocab_size", "d_model", "num_layers", "mlp_dim", "batch_size",
          "seq_len")})
  return _record(
      torch, "torch_transformer_train", shape, step_s, first_step_s, times,
      batch=batch, tokens=batch * seq_len, flops=flops,
      flops_source="analytic (flops_lib.transformer_train_flops: projections, "
                   "MLP, head and full-square attention matmuls, 3x forward)",
      extra={"attention": "absolute", "position_encoding": "learned"})


def bench_bigru(torch) -> dict:
  """Times AdamW steps of the reference bidirectional GRU next-token model.

  Embedding 100 -> torch.nn.GRU(3 layers, 128 per direction, bidirectional,
  dropout 0.2) -> the last layer's final states of both directions ->
  dropout -> dense 256 + LeakyReLU -> vocabulary logits; cross-entropy on
  the token after the 50-token window; AdamW and clipping as the JAX config.
  """
  shape = BIGRU_TRAIN_SHAPE
  vocab, embed, hidden = shape["vocab_size"], shape["embed_dim"], shape["hidden_size"]
  layers, batch, window = shape["num_layers"], shape["batch_size"], shape["window"]
  dense, dropout = shape["dense_dim"], shape["dropout_rate"]
  nn = torch.nn
  torch.manual_seed(0)

  class Model(nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(vocab, embed)
      self.gru = nn.GRU(embed, hidden, num_layers=layers, dropout=dropout,
                        bidirectional=True, batch_first=True)
      self.drop = nn.Dropout(dropout)
      self.dense = nn.Linear(2 * hidden, dense)
      self.head = nn.Linear(dense, vocab)

    def forward(self, tokens):
      _, h_n = self.gru(self.embed(tokens))
      final = torch.cat([h_n[-2], h_n[-1]], -1)
      return self.head(nn.functional.leaky_relu(self.dense(self.drop(final)), 0.01))

  step_s, first_step_s, times = _time_lm_steps(
      torch, Model(), lr=2e-3, vocab=vocab, batch=batch, length=window + 1,
      last_only=True)
  flops = flops_lib.gru_train_flops(
      vocab_size=vocab, embed_dim=embed, hidden_size=hidden, num_layers=layers,
      batch_size=batch, seq_len=window, bidirectional=True, dense_dim=dense,
      last_only=True)
  return _record(
      torch, "torch_bigru_train", shape, step_s, first_step_s, times,
      batch=batch, tokens=None, flops=flops,
      flops_source="analytic (flops_lib.gru_train_flops, 3x forward)")


def _record(torch, name: str, shape: dict, step_s: float, first_step_s: float,
            times: list[float], *, batch: int, tokens: int | None, flops: int,
            flops_source: str, extra: dict | None = None) -> dict:
  """The JSON line of a reference: the same keys as `musegen_jax.bench`'s.

  `tokens` per step (None: not a token model); the matmul roof is measured
  here, after the timing.
  """
  roof = measure_torch_roof(torch, FLAGS.roof_size)
  record = {"bench": name, **shape, **(extra or {}), "dtype": "float32",
            "matmul_dtype": FLAGS.matmul_dtype,
            "device": _device(torch),
            "examples_per_sec": round(batch / step_s, 2)}
  if tokens is not None:
    record["tokens_per_sec"] = round(tokens / step_s, 1)
  record.update({
      "step_ms": round(step_s * 1e3, 1),
      "step_ms_min": round(min(times) * 1e3, 1),
      "steps": FLAGS.steps,
      "compile_s": round(first_step_s, 3),
      "compile_note": "eager: no compile; compile_s is the first step's time",
      "peak_rss_mb": peak_rss_mb(),
      "flops_per_step": flops,
      "flops_source": flops_source,
      "gflops_per_sec": round(flops / step_s / 1e9, 1),
      "roof_gflops": round(roof, 1),
      "roof_source": f"torch {FLAGS.matmul_dtype} {FLAGS.roof_size}^3 matmul",
      "mfu": round(flops / step_s / 1e9 / roof, 3),
      "env": {k: os.environ[k] for k in ("GLIBC_TUNABLES",) if k in os.environ},
  })
  return record


def _time_lm_steps(torch, model, *, lr: float, vocab: int, batch: int,
                   length: int, last_only: bool) -> tuple[float, float, list[float]]:
  """Times AdamW (betas 0.9/0.98, weight decay 0.01, clipping at 1.0) steps
  of a token model on random [batch, length] tokens: cross-entropy on every
  next token, or with `last_only` on the last token (a [batch, vocab] output)."""
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98),
                          weight_decay=0.01)
  loss_fn = torch.nn.CrossEntropyLoss()
  gen = torch.Generator().manual_seed(0)
  batches = [torch.randint(2, vocab, (batch, length), generator=gen)
             for _ in range(4)]

  def step(tokens):
    with torch.autocast("cpu", dtype=torch.bfloat16,
                        enabled=FLAGS.matmul_dtype == "bfloat16"):
      logits = model(tokens[:, :-1])
      if last_only:
        loss = loss_fn(logits, tokens[:, -1])
      else:
        loss = loss_fn(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()

  return _time_steps(step, batches)


def _time_steps(step, batches) -> tuple[float, float, list[float]]:
  """(median step seconds, first step seconds, timed step seconds)."""
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
  return float(np.median(times)), first_step_s, times


def _device(torch) -> str:
  return (f"cpu ({cpu_model()}, {os.cpu_count()} cores), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.matmul_dtype != "float32" and FLAGS.bench == "wavegan":
    raise app.UsageError("--matmul_dtype=bfloat16 covers the token models "
                         "(lstm, bigru, transformer), not wavegan")
  torch = _import_torch()
  torch.set_num_threads(FLAGS.threads)
  bench_fn = {"lstm": bench_lstm, "wavegan": bench_wavegan,
              "transformer": bench_transformer, "bigru": bench_bigru}[FLAGS.bench]
  print(json.dumps(bench_fn(torch)), flush=True)


def run() -> None:
  """The command (`python -m musegen_jax.bench_torch`), with the same
  huge-page malloc as the JAX benchmark."""
  runtime.setup(hugepages=True)
  app.run(main)


if __name__ == "__main__":
  run()

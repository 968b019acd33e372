"""Benchmarks: not part of the library a training run imports.

- `bench`: the JAX train step, input pipeline, sampling, soak and
  accelerator benchmarks (`python -m musegen_jax.bench`, `musegen-bench`).
- `bench_torch`: the eager PyTorch references for the train benchmarks
  (`python -m musegen_jax.bench_torch`; PyTorch is not a dependency).
- `common`: the fixed train shapes and machine description both share.

`musegen_jax/bench.py` and `musegen_jax/bench_torch.py` keep the command
names: `python -m` needs a module at that path.
"""

"""`python -m musegen_jax.bench_torch`: runs
`musegen_jax.benchmarks.bench_torch` as the command (its --help and flags),
kept at this name."""

if __name__ == "__main__":
  import runpy
  runpy.run_module("musegen_jax.benchmarks.bench_torch", run_name="__main__",
                   alter_sys=True)

"""`python -m musegen_jax.bench`: runs `musegen_jax.benchmarks.bench` as the
command (its --help and flags), kept at this name."""

from musegen_jax import runtime

# In a worker process the benchmark spawns, this module is the one imported
# again: see runtime.setup_if_run_as_command.
runtime.setup_if_run_as_command(__name__)


def run() -> None:
  """The console script `musegen-bench` of an install made before the move."""
  from musegen_jax.benchmarks import bench  # pylint: disable=import-outside-toplevel
  bench.run()


if __name__ == "__main__":
  import runpy
  runpy.run_module("musegen_jax.benchmarks.bench", run_name="__main__",
                   alter_sys=True)

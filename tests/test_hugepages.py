"""The start-up re-exec that turns on huge-page malloc (musegen_jax/hugepages.py)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = ("import os; print('pid', os.getpid(), flush=True); "
          "from musegen_jax import hugepages; hugepages.reexec_with_huge_pages(); "
          "print('after', os.getpid(), os.environ.get('GLIBC_TUNABLES'))")


def _run(**env_changes):
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "MUSEGEN_JAX_HUGEPAGES")}
  env.update(env_changes)
  out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, check=True,
                       capture_output=True, text=True, timeout=60).stdout
  return out.splitlines()


def test_reexec_adds_the_tunable_once_keeping_pid_and_arguments():
  lines = _run()
  # The command ran twice (before and after the exec), as the same process.
  first, second, after = lines
  assert first == second and first.startswith("pid ")
  assert after == f"after {first.split()[1]} glibc.malloc.hugetlb=1"
  # Other tunables are kept.
  *_, after = _run(GLIBC_TUNABLES="glibc.malloc.arena_max=2")
  assert after.endswith("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")


def test_opt_out_and_an_explicit_setting_are_left_alone():
  lines = _run(MUSEGEN_JAX_HUGEPAGES="0")
  assert len(lines) == 2 and lines[1].endswith(" None")
  lines = _run(GLIBC_TUNABLES="glibc.malloc.hugetlb=0")
  assert len(lines) == 2 and lines[1].endswith(" glibc.malloc.hugetlb=0")

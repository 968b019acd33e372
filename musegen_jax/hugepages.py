"""Transparent huge pages for malloc on Linux: one re-exec at start-up.

XLA on CPU allocates each step's temporary buffer with malloc; glibc serves
anything over 32 MB with a fresh mmap, so every page of it is faulted in
again on every step (tens of thousands of faults per step, a large share
of a Transformer step's time on CPU). glibc's tunable
`glibc.malloc.hugetlb=1` (glibc 2.35+) backs those mmaps with transparent
huge pages: 512 times fewer faults. glibc reads tunables only at process
start, so the command-line entry points (`main`, `bench`, `bench_torch`)
call `runtime.setup(hugepages=True)` first, which calls
`reexec_with_huge_pages()`: it re-executes the same command line once with
the tunable added to $GLIBC_TUNABLES (same pid, same arguments).

Set MUSEGEN_JAX_HUGEPAGES=0 to skip it; a $GLIBC_TUNABLES that already says
anything about glibc.malloc.hugetlb is left alone. Older glibc ignores the
unknown tunable.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "MUSEGEN_JAX_HUGEPAGES"


def reexec_with_huge_pages() -> None:
  """Re-executes this command with huge-page malloc, unless off or already on.

  Call before anything else happens in the process (threads, open files
  and signal handlers do not survive the exec).
  """
  if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT) == "0":
    return
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  argv = getattr(sys, "orig_argv", None)  # Python 3.10+: the whole command line.
  if TUNABLE in tunables or not argv:
    return
  env = dict(os.environ)
  env["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, f"{TUNABLE}=1"]))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], env)

"""Transparent huge pages for XLA:CPU's buffers, switched on by the command-line tools.

Why: XLA:CPU takes each executable's buffers from ``malloc``; glibc serves blocks over
32 MiB (a 4096 x 4096 float32 matrix is 64 MiB) as fresh ``mmap`` regions, and the
kernel then faults them in 4 KiB page by page on every call, which on a virtual machine
costs more than the arithmetic on them. With ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
(glibc >= 2.35) glibc asks for transparent huge pages on those regions (512 times fewer
faults). Measured on 2 cores (``bench/losses.py``, BUILD_NOTES §4): writing a fresh
4096 x 4096 float32 array 48 -> 12 ms; the triplet loss + gradient at B = 4096 about 2x
faster; the small ConvNet's train step at batch 256 1.28x. Results are bit-identical:
only where the memory comes from changes.

glibc reads its tunables when a process starts, so :func:`reexec` starts the process
again, once, with the tunable added. ``tsm-train``, ``tsm-embed`` and the study runners
call it first thing; ``TSM_HUGEPAGES=0`` turns it off, and it does nothing where the
kernel's transparent huge pages are off, on another C library, or outside Linux.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def available() -> bool:
  """Whether glibc can put malloc's large blocks on transparent huge pages here."""
  if not sys.platform.startswith("linux"):
    return False
  libc, version = platform.libc_ver()
  try:
    major, minor = (int(v) for v in version.split(".")[:2])
  except ValueError:
    return False
  if libc != "glibc" or (major, minor) < (2, 35):
    return False
  try:
    with open(_THP_SETTING, encoding="ascii") as f:
      setting = f.read()
  except OSError:
    return False
  return "[always]" in setting or "[madvise]" in setting


def enabled() -> bool:
  """Whether this process started with the tunable set."""
  return "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", "")


def reexec() -> None:
  """Re-executes this process once with huge pages on, where that helps; else returns.

  Call it before anything else in a command-line entry point (never from a library
  function: it replaces the running process).
  """
  if (os.environ.get("TSM_HUGEPAGES", "1") == "0" or enabled() or not available()
      or not getattr(sys, "orig_argv", None)):
    return
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  env = dict(os.environ, GLIBC_TUNABLES=f"{tunables}:{TUNABLE}" if tunables else TUNABLE)
  try:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
  except OSError:
    return  # Run on without: only speed is lost.

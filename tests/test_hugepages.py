"""tsm.hugepages: the entry points restart once with glibc's huge-page tunable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tsm import hugepages

_PROBE = ("from tsm import hugepages; hugepages.reexec(); import os; "
          "print(os.environ.get('GLIBC_TUNABLES', ''))")


def _probe(**env):
  full = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES",
                                                          "TSM_HUGEPAGES")}
  full.update(env)
  out = subprocess.run([sys.executable, "-c", _PROBE], env=full, check=True,
                       capture_output=True, text=True)
  return out.stdout.strip()


@pytest.mark.skipif(not hugepages.available(), reason="no glibc >= 2.35 with THP here")
def test_reexec_adds_the_tunable_once_and_keeps_others():
  assert _probe() == hugepages.TUNABLE
  # Another tunable the user set is kept, and nothing is added twice.
  assert _probe(GLIBC_TUNABLES="glibc.malloc.check=0") == (
      "glibc.malloc.check=0:" + hugepages.TUNABLE)
  assert _probe(GLIBC_TUNABLES=hugepages.TUNABLE) == hugepages.TUNABLE


def test_reexec_can_be_turned_off():
  assert _probe(TSM_HUGEPAGES="0") == ""


def test_in_process_entry_points_never_reexec(monkeypatch):
  # main(argv) as the tests call it must not replace the test process.
  called = []
  monkeypatch.setattr(os, "execve", lambda *a: called.append(a))
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.setenv("TSM_HUGEPAGES", "1")
  hugepages.reexec()
  assert len(called) == int(hugepages.available())  # The function itself would.
  from tsm import cli  # pylint: disable=import-outside-toplevel
  called.clear()
  with pytest.raises(SystemExit):
    cli.main(["tsm-train", "--help"])
  assert not called

"""The engine's tests again with MEMSTORE_PORTABLE=1: the paths macOS, Windows and odd file systems
take (locks without hard links, renames retried as on Windows), forced on Linux."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE_TESTS = ["tests/test_git_citizen.py", "tests/test_concurrency.py", "tests/test_crash.py",
                "tests/test_store.py", "tests/test_hostile.py"]


@pytest.mark.skipif(os.environ.get("MEMSTORE_PORTABLE") == "1", reason="already the portable run")
def test_the_engine_tests_pass_with_the_portable_paths_forced() -> None:
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ENGINE_TESTS],
                         cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
                         env={**os.environ, "MEMSTORE_PORTABLE": "1"})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1]


def test_the_setting_reaches_the_engine() -> None:
    code = "from memstore import fsutil; print(fsutil.PORTABLE)"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "MEMSTORE_PORTABLE": "1"})
    assert shown.stdout.strip() == "True"

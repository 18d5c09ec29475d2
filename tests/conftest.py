"""Shared test fixtures and paths."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 300, env: dict | None = None):
    """Run `fer-automl` as a user would (a child process of this interpreter)."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "runners.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO), env=full_env)


@pytest.fixture
def cli():
    return run_cli

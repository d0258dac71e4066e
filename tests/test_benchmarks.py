"""Smoke test of benchmarks/train_speed.py: a short run prints every figure.

The benchmark's numbers are not tested (they depend on the machine); this keeps the
script working as the course's code changes.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_ddp import needs_shakespeare  # tests/ is on the path under pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@needs_shakespeare
def test_train_speed_prints_its_figures() -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "train_speed.py")]
    command += ["--steps", "20", "--baseline", "--baseline-burst", "10"]
    command += ["--compile", "no", "--precision", "fp32"]
    done = subprocess.run(
        command, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for line in [
        "model: rope positions, MLP 1x, 402,688 parameters",
        "ms per iteration (median)",
        "plain GPT, 20 steps between",
        "ours relative to the plain GPT",
        "val loss, whole split",
        "share of float32 matmul peak",
    ]:
        assert line in done.stdout, done.stdout


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--mlp-ratio", "0"], "must be a whole number >= 1, got 0"),
        (["--steps", "-3"], "must be a whole number >= 1, got -3"),
        (["--baseline-burst", "15"], "must be a multiple of 10"),
    ],
)
def test_train_speed_rejects_bad_flags_before_any_work(flags, match) -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), *flags]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and match in done.stderr, done.stderr
    assert "Traceback" not in done.stderr

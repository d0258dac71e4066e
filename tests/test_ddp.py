"""Tests of utils.train_ddp: two CPU processes under torchrun train one model.

The launcher is PyTorch's own (`python -m torch.distributed.run`, what `torchrun`
runs), on this machine, with the "gloo" backend and one thread per process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils import data
from utils.paths import cache_dir
from utils.reference.gpt import GPT, GPTConfig
from utils.train_ddp import weights_sha256
from utils.training import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = data.DATASETS["tinyshakespeare"].filename


def _have_shakespeare() -> bool:
    mirror = os.environ.get(data.MIRROR_ENV)
    if mirror and (Path(mirror) / SHAKESPEARE).is_file():
        return True
    return (cache_dir() / SHAKESPEARE).is_file()


needs_shakespeare = pytest.mark.skipif(
    not _have_shakespeare(),
    reason=f"needs Tiny Shakespeare in the cache or in the {data.MIRROR_ENV} folder",
)


def run_torchrun(out: Path, steps: int) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "utils.train_ddp",
        "--steps",
        str(steps),
        "--out",
        str(out),
        "--quiet",
    ]
    # keep the test's PYTHONPATH (make test puts the network guard on it)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@needs_shakespeare
def test_ddp_ranks_end_with_equal_weights(tmp_path):
    result = run_torchrun(tmp_path, steps=5)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    assert [r["world_size"] for r in reports] == [2, 2]
    assert reports[0]["init_sha256"] == reports[1]["init_sha256"]
    assert reports[0]["final_sha256"] == reports[1]["final_sha256"]
    assert reports[0]["final_sha256"] != reports[0]["init_sha256"]  # it trained
    # each rank drew its own batches, so their losses differ
    assert reports[0]["first_batch_sha256"] != reports[1]["first_batch_sha256"]
    assert reports[0]["train_loss"] != reports[1]["train_loss"]

    # rank 0's checkpoint holds the final weights, without DDP's "module." prefix
    model = GPT(
        GPTConfig(vocab_size=65, context_length=32, n_layers=2, d_model=32, n_heads=4)
    )
    meta = load_checkpoint(tmp_path / "checkpoint.pt", model)
    assert meta["step"] == 5
    assert weights_sha256(model) == reports[0]["final_sha256"]
    keys = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"].keys()
    assert keys and not any(key.startswith("module.") for key in keys)

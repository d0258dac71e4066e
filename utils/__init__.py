"""Helpers shared by the course's notebooks.

The chapters import what they use from here: `set_seed`, `pick_device` and `check_shape`
at the top level, the rest from one module per concept (`utils.data`, `utils.models`,
`utils.checks`, `utils.plots`, `utils.widgets`, `utils.reference`).
"""

from utils.shapes import check_shape
from utils.system import pick_device, set_seed

__all__ = ["check_shape", "pick_device", "set_seed"]

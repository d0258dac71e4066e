"""Exercise checks for chapter 07 (Looking inside)."""

from utils.checks.core import Case, Exercise, register  # noqa: F401

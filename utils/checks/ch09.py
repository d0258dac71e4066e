"""Exercise checks for chapter 09 (Modern LLMs and efficiency)."""

from utils.checks.core import Case, Exercise, register  # noqa: F401

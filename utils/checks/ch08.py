"""Exercise checks for chapter 08 (Fine-tuning)."""

from utils.checks.core import Case, Exercise, register  # noqa: F401

"""The course's own implementations of what the chapters build.

Each chapter writes a piece of an LLM by hand. The finished, tested version lives here:
later chapters import it instead of the learner's exercise answers, so a chapter runs
top to bottom even when earlier exercises are unsolved, and `utils.checks` compares
answers against it. Names match the chapter code, so the two can be diffed.
"""

from utils.reference.params import ArchConfig, count_parameters
from utils.reference.softmax import softmax

__all__ = [
    "ArchConfig",
    "count_parameters",
    "softmax",
]

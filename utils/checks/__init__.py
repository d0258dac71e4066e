"""Exercise checks: `check_exercise("0.1", softmax)` judges a learner's function.

The checker runs the function on small cases, compares it with `utils.reference` and
prints "not attempted yet" or "passed n/n checks", or raises an AssertionError that
names the first failing case and gives a hint. `core` holds the machinery; one module
per chapter (`ch00`, `ch01`, ...) registers that chapter's exercises in `EXERCISES` when
it is imported below.
"""

from utils.checks import ch00, ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09
from utils.checks.core import EXERCISES, Case, Exercise, check_exercise, register

__all__ = [
    "EXERCISES",
    "Case",
    "Exercise",
    "check_exercise",
    "ch00",
    "ch01",
    "ch02",
    "ch03",
    "ch04",
    "ch05",
    "ch06",
    "ch07",
    "ch08",
    "ch09",
    "register",
]

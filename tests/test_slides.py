"""utils.slides: slide metadata from headings, and decks that load nothing remote."""

import json
import re
import shutil
from pathlib import Path

import pytest

from utils.slides import (
    REMOTE_ASSET,
    SLIDE_TYPES,
    export_deck,
    set_metadata,
    slide_types,
    write_assets,
)

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
FIX = "python -m utils.slides --set-metadata chapters/NN_name.ipynb"


def _markdown(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _code(text: str, outputs: list | None = None) -> dict:
    return {
        "cell_type": "code",
        "metadata": {},
        "source": text,
        "outputs": outputs or [],
    }


def test_slide_types_follow_headings():
    cells = [
        _markdown("# Chapter 03 · Self-attention\n\n- a goal"),
        _markdown("### 3.0.1 Setup"),
        _code("import torch"),
        _markdown("## 3.1 Attention"),
        _code("print(1)"),
        _markdown("### 3.1.1 Scaling"),
        _markdown("Some words."),
        _markdown("### Exercise 3.1 · Attention"),
        _markdown("## Summary"),
    ]
    kinds = ["slide", "skip", "skip", "slide", "fragment", "subslide", "-"]
    assert slide_types(cells) == kinds + ["subslide", "slide"]


def test_slide_types_split_a_long_section():
    figure = {
        "output_type": "display_data",
        "data": {"image/png": "", "text/plain": ""},
    }
    cells = [_markdown("## 1.1 Long")] + [
        cell for _ in range(3) for cell in (_markdown("Why."), _code("x", [figure]))
    ]
    kinds = slide_types(cells)
    assert kinds[0] == "slide" and "subslide" in kinds[1:]
    assert all(kind in SLIDE_TYPES for kind in kinds)


def test_set_metadata_is_idempotent(tmp_path):
    path = tmp_path / "03.ipynb"
    notebook = json.loads((ROOT / "chapters" / CHAPTERS[0].name).read_text())
    for cell in notebook["cells"]:
        cell["metadata"].pop("slideshow", None)
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    assert set_metadata(path) is True
    first = path.read_text()
    assert set_metadata(path) is False and path.read_text() == first
    stored = json.loads(first)
    for before, after in zip(notebook["cells"], stored["cells"], strict=True):
        assert after.pop("metadata").keys() - before.pop("metadata").keys() == {
            "slideshow"
        }
        assert after == before  # sources and outputs untouched


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_has_slide_metadata_on_every_cell(chapter):
    cells = json.loads(chapter.read_text())["cells"]
    stored = [
        c.get("metadata", {}).get("slideshow", {}).get("slide_type") for c in cells
    ]
    missing = [i for i, kind in enumerate(stored) if kind not in SLIDE_TYPES]
    assert not missing, f"cells {missing} have no slide type; run `{FIX}`"
    assert stored == slide_types(cells), f"slide types are out of date; run `{FIX}`"


def test_deck_loads_nothing_remote_and_holds_the_chapter(tmp_path):
    chapter = ROOT / "chapters" / "03_self_attention.ipynb"
    assets = write_assets(tmp_path)
    deck = export_deck(chapter, tmp_path).read_text()
    assert not REMOTE_ASSET.search(deck)
    for src in re.findall(r"<(?:script|link)[^>]+(?:src|href)=\"([^\"]+)\"", deck):
        if not src.startswith("data:"):
            assert (tmp_path / src.split("?")[0]).is_file(), src
    kinds = [c["metadata"]["slideshow"]["slide_type"] for c in _cells(chapter)]
    # reveal.js nests: each slide is a column of sections, its subslides below it
    slides, subslides = kinds.count("slide"), kinds.count("subslide")
    assert deck.count("<section") == 2 * slides + subslides
    assert "3.1 Attention as a soft lookup" in deck and "Going further" in deck
    assert (assets / "mathjax" / "MathJax.js").is_file()
    shutil.rmtree(assets)


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]

"""The chapters as slides: slide metadata from the cell structure, and offline decks.

Two jobs, both run from the command line:

    python -m utils.slides --set-metadata chapters/*.ipynb   # write slide types
    python -m utils.slides --export build/slides chapters/*.ipynb  # static decks

`--set-metadata` gives every cell a `slideshow.slide_type` (what RISE in JupyterLab
and nbconvert read) from the notebook's headings, and changes nothing else, so running
it twice is the same as running it once:

- the title cell and every `##` heading start a slide, every `###` heading a
  subslide (a slide below it; the down arrow goes there);
- the setup before a chapter's first section (`### N.0.1 Setup` and its code) is
  skipped: run it before presenting;
- code cells appear as fragments, one click each, on the slide of their heading;
- a markdown cell that would overflow a slide starts a subslide of its own.

`--export` writes one self-contained deck per notebook with nbconvert's reveal.js
template. Nothing in a deck loads from the network: reveal.js 4 comes from the
`jupyterlab-rise` package (the files it was built from), jQuery, require.js and
MathJax 2 from `nbclassic`; all of them are copied to `assets/` next to the decks.
Widgets need a kernel, so a deck shows the figure each widget drew when the notebook
ran, without its controls.
"""

import argparse
import html
import json
import re
import shutil
import sys
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

SLIDE_TYPES = ("slide", "subslide", "fragment", "-", "skip", "notes")
# Rough height of a slide, in lines of about 90 characters.
SLIDE_LINES = 22
CHARS_PER_LINE = 90
IMAGE_LINES = 14  # a matplotlib figure at the default size
MAX_TEXT_LINES = 12  # a long printout scrolls
SETUP_HEADING = re.compile(r"^### \d+\.0\.\d+ Setup\b")
REMOTE_ASSET = re.compile(
    r"<script[^>]+src=[\"']?(?:https?:)?//|<link[^>]+href=[\"']?(?:https?:)?//"
    r"|@import\s+(?:url\()?[\"']?(?:https?:)?//|import\s[^;]*from\s+[\"']https?://"
    r"|require\.config\([^)]*https?://|url\([\"']?https?://",
    re.IGNORECASE,
)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
MATHJAX_CONFIG = """<script type="text/x-mathjax-config">
MathJax.Hub.Config({
  jax: ["input/TeX", "output/SVG"],
  extensions: ["tex2jax.js"],
  TeX: {extensions: ["AMSmath.js", "AMSsymbols.js", "noErrors.js", "noUndefined.js"]},
  tex2jax: {inlineMath: [["$", "$"]], processEscapes: true},
  SVG: {font: "STIX-Web"},
  showMathMenu: false,
  menuSettings: {assistiveMML: false},  // its hidden MathML shows in a deck
  messageStyle: "none"
});
</script>
"""


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _heading(cell: dict) -> str | None:
    """'#', '##' or '###' when a markdown cell opens with a heading, else None."""
    if cell["cell_type"] != "markdown":
        return None
    match = re.match(r"(#{1,3}) ", _source(cell).lstrip())
    return match.group(1) if match else None


def _lines(text: str) -> int:
    return sum(1 + len(line) // CHARS_PER_LINE for line in text.splitlines())


def _height(cell: dict) -> int:
    """How many lines a cell fills on a slide, outputs included."""
    height = _lines(_source(cell))
    for output in cell.get("outputs", []):
        data = output.get("data", {})
        if any(key.startswith("image/") for key in data):
            height += IMAGE_LINES
        elif "text" in output or "text/plain" in data:
            text = output.get("text") or data.get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else text
            height += min(_lines(text), MAX_TEXT_LINES)
    return height


def slide_types(cells: Sequence[dict]) -> list[str]:
    """The slide type of each cell, from the headings (see the module docstring).

    Args:
        cells: a notebook's cells (nbformat 4 dictionaries).

    Returns:
        One of SLIDE_TYPES per cell.

    Introduced in chapter 0 (for instructors).
    """
    types, used, in_setup = [], 0, False
    for i, cell in enumerate(cells):
        level = _heading(cell)
        height = _height(cell)
        if cell["cell_type"] == "markdown":  # a new text cell ends the setup
            in_setup = bool(SETUP_HEADING.match(_source(cell).lstrip()))
        if in_setup:
            kind = "skip"
        elif i == 0 or level in ("#", "##"):
            kind, used = "slide", 0
        elif level == "###":
            kind, used = "subslide", 0
        elif cell["cell_type"] == "markdown":
            kind = "subslide" if used and used + height > SLIDE_LINES else "-"
            used = 0 if kind == "subslide" else used
        else:
            kind = "fragment"
        types.append(kind)
        used += height
    return types


def set_metadata(path: Path) -> bool:
    """Write `slideshow.slide_type` into every cell of one notebook.

    Only cell metadata changes; the file keeps nbformat's layout (one-space indent,
    UTF-8, a final newline).

    Args:
        path: an .ipynb file.

    Returns:
        True when the file changed.

    Introduced in chapter 0 (for instructors).
    """
    raw = path.read_text(encoding="utf-8")
    notebook = json.loads(raw)
    kinds = slide_types(notebook["cells"])
    for cell, kind in zip(notebook["cells"], kinds, strict=True):
        cell.setdefault("metadata", {})["slideshow"] = {"slide_type": kind}
    text = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
    if text == raw:
        return False
    path.write_text(text, encoding="utf-8")
    return True


def _package_dir(name: str) -> Path:
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the slides need the {name!r} package for their offline copies of "
            "reveal.js, jQuery, require.js and MathJax; install the pinned stack with "
            "`make setup` (or `pip install -r requirements.txt`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _reveal_sources() -> dict[str, str]:
    """reveal.js files by their path in the npm package, from jupyterlab-rise's maps."""
    wanted = (
        "dist/reveal.esm.js",
        "dist/reveal.css",
        "dist/theme/white.css",
        "plugin/notes/notes.esm.js",
    )
    found = {}
    for path in sorted((_package_dir("jupyterlab_rise") / "static").glob("*.js.map")):
        text = path.read_text(encoding="utf-8")
        if "node_modules/reveal.js/" not in text:
            continue
        source_map = json.loads(text)
        sources = source_map.get("sources", [])
        contents = source_map.get("sourcesContent") or [None] * len(sources)
        for name, content in zip(sources, contents, strict=True):
            for file in wanted:
                if name.endswith("node_modules/reveal.js/" + file) and content:
                    found[file] = content
    missing = [file for file in wanted if file not in found]
    if missing:
        raise FileNotFoundError(
            f"reveal.js files {missing} were not found in jupyterlab-rise's static "
            "folder; requirements.txt pins jupyterlab-rise==0.43.1, reinstall it"
        )
    return found


def _esm_to_amd(code: str) -> str:
    """An ES module with one default export, as a script that also defines an AMD
    module (require.js) or a global `Reveal` / `RevealNotes`."""
    code = re.sub(r"//# sourceMappingURL=\S+", "", code)
    code, n = re.subn(r"export default\s*", "var __default__ = ", code, count=1)
    if n != 1 or re.search(r"^\s*(import|export)\s", code, re.MULTILINE):
        raise RuntimeError("reveal.js's files changed shape: update utils/slides.py")
    return (
        "(function () {\n" + code + "\n;if (typeof define === 'function' && define.amd)"
        " { define(function () { return __default__; }); }\n})();\n"
    )


def _css_from_loader_module(code: str) -> str:
    """The CSS text that a css-loader module holds, without its font and images."""
    match = re.search(r"\.push\(\[module\.id, `((?:[^`\\]|\\.)*)`", code)
    if match is None:
        raise RuntimeError("reveal.js's CSS changed shape: update utils/slides.py")
    css = re.sub(
        r"url\(\$\{___CSS_LOADER_URL_REPLACEMENT_\d+___\}\)", "none", match.group(1)
    )
    return re.sub(r"\\(.)", r"\1", css, flags=re.DOTALL)  # undo the template escapes


def write_assets(out_dir: Path) -> Path:
    """Copy reveal.js, jQuery, require.js and MathJax into `out_dir/assets`.

    Returns:
        The assets folder.

    Raises:
        FileNotFoundError: a package that carries them is not installed.

    Introduced in chapter 0 (for instructors).
    """
    assets = out_dir / "assets"
    reveal = _reveal_sources()
    files = {
        "reveal/dist/reveal.js": _esm_to_amd(reveal["dist/reveal.esm.js"]),
        "reveal/plugin/notes/notes.js": _esm_to_amd(
            reveal["plugin/notes/notes.esm.js"]
        ),
        "reveal/dist/reveal.css": _css_from_loader_module(reveal["dist/reveal.css"]),
        "reveal/dist/theme/white.css": _css_from_loader_module(
            reveal["dist/theme/white.css"]
        ),
    }
    for name, text in files.items():
        (assets / name).parent.mkdir(parents=True, exist_ok=True)
        (assets / name).write_text(text, encoding="utf-8")
    components = _package_dir("nbclassic") / "static" / "components"
    shutil.copy(components / "jquery" / "dist" / "jquery.min.js", assets / "jquery.js")
    shutil.copy(components / "requirejs" / "require.js", assets / "require.js")
    mathjax = assets / "mathjax"
    if not (mathjax / "MathJax.js").is_file():
        shutil.copytree(
            components / "MathJax",
            mathjax,
            ignore=shutil.ignore_patterns("localization", "HTML-CSS", "*.md"),
            dirs_exist_ok=True,
        )
    return assets


def _static_copy(notebook: dict) -> dict:
    """The notebook without widget views (they need a kernel) and nbval markers."""
    notebook = json.loads(json.dumps(notebook))
    notebook["metadata"].pop("widgets", None)
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines = _source(cell).splitlines(keepends=True)
        cell["source"] = "".join(ln for ln in lines if not ln.startswith("# NBVAL_"))
        cell["outputs"] = [
            out
            for out in cell.get("outputs", [])
            if WIDGET_VIEW not in out.get("data", {})
        ]
    return notebook


def export_deck(path: Path, out_dir: Path) -> Path:
    """Write `out_dir/<notebook stem>.slides.html`, a deck that loads nothing remote.

    Args:
        path: a notebook with slide metadata (see `set_metadata`).
        out_dir: the folder for the decks; `write_assets(out_dir)` fills its
            `assets/` folder.

    Returns:
        The deck's path.

    Raises:
        RuntimeError: the deck would still load something from the network.

    Introduced in chapter 0 (for instructors).
    """
    import nbformat
    from nbconvert import SlidesExporter

    exporter = SlidesExporter(
        reveal_url_prefix="assets/reveal",
        reveal_theme="white",
        reveal_scroll=True,
        jquery_url="assets/jquery.js",
        require_js_url="assets/require.js",
        mathjax_url="assets/mathjax/MathJax.js",
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    static = _static_copy(json.loads(path.read_text(encoding="utf-8")))
    notebook = nbformat.reads(json.dumps(static), as_version=4)
    body, _ = exporter.from_notebook_node(
        notebook, resources={"metadata": {"name": path.stem}}
    )
    # No diagram in the course uses mermaid, whose module would come from a CDN.
    body = re.sub(
        r"<script type=\"module\">\s*import mermaid.*?</script>",
        "",
        body,
        flags=re.DOTALL,
    )
    # MathJax typesets once at start-up; nbconvert's second pass and its re-render
    # on every slide change would draw each formula twice with the SVG output.
    body = body.replace('MathJax.Hub.Queue(["Typeset", MathJax.Hub]);', "", 1)
    body = body.replace("Reveal.addEventListener('slidechanged', update);", "", 1)
    body = body.replace(
        '<script src="assets/mathjax/MathJax.js">',
        MATHJAX_CONFIG + '<script src="assets/mathjax/MathJax.js">',
        1,
    )
    remote = REMOTE_ASSET.search(body)
    if remote:
        raise RuntimeError(
            f"the deck of {path.name} would load {html.escape(remote.group(0))!r} "
            "from the network; utils/slides.py must serve it locally"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    deck = out_dir / f"{path.stem}.slides.html"
    deck.write_text(body, encoding="utf-8")
    return deck


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m utils.slides", description=__doc__.split("\n\n")[0]
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--set-metadata",
        action="store_true",
        help="write slide types into the notebooks' cell metadata",
    )
    group.add_argument(
        "--export",
        metavar="OUT_DIR",
        type=Path,
        help="write one offline reveal.js deck per notebook here",
    )
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.notebooks if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    if args.set_metadata:
        for path in args.notebooks:
            print(f"{path}: {'updated' if set_metadata(path) else 'unchanged'}")
        return 0
    write_assets(args.export)
    for path in args.notebooks:
        print(f"{path} -> {export_deck(path, args.export)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

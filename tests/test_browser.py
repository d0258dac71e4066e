"""The course in a real browser: JupyterLab in headless Chromium, driven by Playwright.

One JupyterLab server runs on a free loopback port with a throwaway token and its own
settings, workspace and runtime folders, serving copies of chapters 03 and 04 (the
stored notebooks are never opened, so never saved). Chromium is Debian's `chromium`
package; Playwright's Python API drives it through `executable_path` and never
downloads a browser. The chapter tests run every cell, then check what a learner
sees; one opens chapter 03 as RISE slides, and one opens a deck of `make slides` from
disk. Every request must go to the server (or stay on disk for the deck); anything
else is recorded and aborted. Screenshots go to `build/screenshots/` (ignored by git).
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "build" / "screenshots"
CHROMIUM = os.environ.get("LLM_COURSE_CHROMIUM", "/usr/bin/chromium")
OFFLINE_GUARD = Path(__file__).resolve().parent / "offline"
# Chromium without sandbox (containers), GPU, or any traffic of its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
RUN_ALL_TIMEOUT_S = 240

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def require_chromium() -> str:
    """Chromium's path; skip (or fail, where `.ci/run` demands it) without one."""
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    message = (
        f"the browser test needs Debian's chromium at {CHROMIUM}: run "
        "`apt-get install -y chromium` (.ci/run does), or point LLM_COURSE_CHROMIUM "
        "at a Chromium binary; never `playwright install`"
    )
    if os.environ.get("LLM_COURSE_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _lab_env(home: Path) -> dict[str, str]:
    """The server's environment: every Jupyter folder under `home`, offline."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # kernel: inline
    folders = {
        "JUPYTERLAB_SETTINGS_DIR": "settings",
        "JUPYTERLAB_WORKSPACES_DIR": "workspaces",
        "JUPYTER_CONFIG_DIR": "config",
        "JUPYTER_RUNTIME_DIR": "runtime",
        "IPYTHONDIR": "ipython",
    }
    for name, sub in folders.items():
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[name] = str(home / sub)
    paths = [str(OFFLINE_GUARD), str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in dict.fromkeys(paths) if p)
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # The settings `make setup` gives every learner (utils/setup_lab.py), written as
    # user settings: no news feed, no update check, RISE on a theme with local fonts.
    from utils.setup_lab import OVERRIDES

    for plugin, values in OVERRIDES.items():
        package, name = plugin.split(":")
        folder = home / "settings" / package
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.jupyterlab-settings").write_text(json.dumps(values) + "\n")
    # Keep every cell in the page, so that selectors find cells out of view too.
    tracker = home / "settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True, exist_ok=True)
    (tracker / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}\n')
    return env


class LabServer:
    """A JupyterLab server on 127.0.0.1 with a random token, serving `root_dir`."""

    def __init__(self, root_dir: Path, home: Path) -> None:
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.log_path = home / "lab.log"
        command = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root_dir}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            command,
            cwd=root_dir,
            env=_lab_env(home),
            stdout=self._log,
            stderr=self._log,
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: {self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"JupyterLab not up after {timeout_s} s: {self.log_path}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A running server whose root holds copies of chapters 03 and 04."""
    require_chromium()
    home = tmp_path_factory.mktemp("lab")
    notebooks = home / "notebooks"
    notebooks.mkdir()
    for name in ("03_self_attention.ipynb", "04_multi_head_attention.ipynb"):
        shutil.copy(ROOT / "chapters" / name, notebooks / name)
    server = LabServer(notebooks, home)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def playwright():
    """Playwright's driver, started once: its sync API cannot run twice at a time."""
    from playwright.sync_api import sync_playwright

    require_chromium()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser_context(lab, playwright, tmp_path_factory):
    """A Chromium context (fresh profile) that records every request it makes."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    context = playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=require_chromium(),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 1000},
    )
    context.requests = []
    context.on("request", lambda request: context.requests.append(request.url))
    context.on(
        "page",
        lambda page: page.on("websocket", lambda ws: context.requests.append(ws.url)),
    )
    # Record, then stop, anything addressed elsewhere than the server.
    context.route(lambda url: bool(_remote([url], lab.port)), lambda r: r.abort())
    try:
        yield context
    finally:
        context.close()


def _remote(urls: list[str], port: int) -> list[str]:
    """The URLs not addressed to the server (data: and blob: stay in the page)."""
    elsewhere = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about"):
            continue
        if parts.hostname not in LOCAL_HOSTS or parts.port != port:
            elsewhere.append(url)
    return elsewhere


def open_and_run_all(context, lab: LabServer, notebook: str):
    """Open `notebook` in JupyterLab, run every cell, wait until the kernel is done."""
    page = context.new_page()
    page.goto(lab.url(f"lab/tree/{notebook}"))
    page.wait_for_function(
        "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
        " && window.jupyterapp.shell.currentWidget.sessionContext"
        " && window.jupyterapp.shell.currentWidget.sessionContext.session"
        " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
        " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
        ".connectionStatus === 'connected'",
        timeout=60_000,
    )
    page.locator(".jp-Notebook").first.wait_for()
    start = time.monotonic()
    page.evaluate(
        "() => window.jupyterapp.commands.execute('notebook:run-all-cells')",
    )
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " const cells = w.content.widgets.filter(c => c.model.type === 'code');"
        " const last = cells[cells.length - 1];"
        " return last.model.executionCount !== null"
        " && w.sessionContext.session.kernel.status === 'idle'; }",
        timeout=RUN_ALL_TIMEOUT_S * 1000,
        polling=500,
    )
    print(f"{notebook}: run all took {time.monotonic() - start:.1f} s")
    return page


def code_cell(page, snippet: str):
    """The notebook cell whose source contains `snippet`, scrolled into view."""
    cell = page.locator(".jp-CodeCell", has_text=snippet).first
    cell.scroll_into_view_if_needed()
    return cell


def assert_clean(page, context, lab: LabServer) -> None:
    """No widget failed, no cell failed, and every request went to the server."""
    assert page.get_by_text("Error displaying widget").count() == 0
    assert page.locator(".jp-OutputArea-output[data-mime-type*=error]").count() == 0
    assert any(f":{lab.port}/" in url for url in context.requests)  # listener works
    assert not _remote(context.requests, lab.port), _remote(context.requests, lab.port)


def _image_src(cell) -> str:
    return cell.locator(".jp-OutputArea-output img").first.get_attribute("src")


def _svg_texts(cell) -> list[str]:
    return cell.locator("svg text").all_text_contents()


def test_chapter03_widgets_render_and_respond(lab, browser_context):
    page = open_and_run_all(browser_context, lab, "03_self_attention.ipynb")
    scaling = code_cell(page, "ScalingExplorer(seq_len")
    assert scaling.locator(".widget-slider").count() == 2
    assert scaling.locator(".widget-checkbox input").count() == 1
    explorer = code_cell(page, "AttentionExplorer(embedding_attention")
    assert explorer.locator(".widget-slider").count() == 3  # layer, head, query
    assert explorer.locator(".widget-text input").count() == 1
    before = _image_src(explorer)
    assert before.startswith("data:image/png")
    explorer.screenshot(path=SCREENSHOTS / "ch03_explorer_before.png")

    explorer.locator(".widget-slider").nth(2).locator(".noUi-handle").focus()
    page.keyboard.press("ArrowRight")  # query 9 -> 10
    explorer.locator(".widget-readout").nth(2).filter(has_text="10").wait_for()
    page.wait_for_function(
        "([el, old]) => el.querySelector('.jp-OutputArea-output img').src !== old",
        arg=[explorer.element_handle(), before],
        timeout=30_000,
    )
    assert _image_src(explorer) != before
    explorer.screenshot(path=SCREENSHOTS / "ch03_explorer_after.png")
    page.screenshot(path=SCREENSHOTS / "ch03_page.png")
    assert_clean(page, browser_context, lab)


def test_chapter03_presents_as_rise_slides(lab, browser_context):
    """RISE's slideshow of the chapter opens from the server and draws its slides."""
    page = browser_context.new_page()
    page.goto(lab.url("rise/03_self_attention.ipynb"))
    page.locator(".reveal .slides section").first.wait_for(timeout=120_000)
    page.locator(".reveal.ready").wait_for(timeout=60_000)
    assert page.locator(".reveal .slides > section").count() == 7  # title, 3.1-3.5, end
    assert page.get_by_text("Attention as a soft lookup").count() >= 1
    page.screenshot(path=SCREENSHOTS / "ch03_rise.png")
    fonts = [u for u in browser_context.requests if "fonts.googleapis" in u]
    assert not fonts, (
        "RISE's default theme ('simple') loads Google Fonts; utils/setup_lab.py's "
        "OVERRIDES must set 'jupyterlab-rise:plugin': {'theme': 'white'}"
    )
    assert_clean(page, browser_context, lab)
    page.close()


def test_chapter04_explorers_and_bertviz_views_render(lab, browser_context):
    page = open_and_run_all(browser_context, lab, "04_multi_head_attention.ipynb")
    for snippet in ("AttentionExplorer(minilm_fn", "AttentionExplorer(smollm_fn"):
        explorer = code_cell(page, snippet)
        assert explorer.locator(".widget-slider").count() == 3, snippet
        assert _image_src(explorer).startswith("data:image/png"), snippet

    head = code_cell(page, "head_view(minilm_maps")
    head.locator("svg text", has_text="cat").first.wait_for(timeout=30_000)
    texts = _svg_texts(head)
    assert texts.count("[CLS]") == 2 and "tired" in texts, texts  # left and right
    head.screenshot(path=SCREENSHOTS / "ch04_head_view.png")

    model = code_cell(page, "model_view(minilm_maps")
    thumbnail = model.locator("#attn_background_0_0")
    thumbnail.wait_for(timeout=30_000)
    box = thumbnail.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    model.locator("text.token", has_text="cat").first.wait_for(timeout=10_000)
    assert "[CLS]" in _svg_texts(model)
    model.screenshot(path=SCREENSHOTS / "ch04_model_view.png")

    smollm_head = code_cell(page, "head_view(smollm_maps")
    smollm_head.locator("svg text", has_text="cat").first.wait_for(timeout=30_000)
    smollm_model = code_cell(page, "model_view(smollm_maps")
    assert smollm_model.locator("[id^=attn_background_]").count() == 6 * 9  # L x H
    page.screenshot(path=SCREENSHOTS / "ch04_page.png", full_page=False)
    assert_clean(page, browser_context, lab)


def test_slides_deck_renders_offline(playwright, tmp_path):
    """A deck from `make slides` opens from disk: reveal.js runs, MathJax draws."""
    from utils.slides import export_deck, write_assets

    write_assets(tmp_path)
    deck = export_deck(ROOT / "chapters" / "03_self_attention.ipynb", tmp_path)
    browser = playwright.chromium.launch(
        executable_path=require_chromium(), headless=True, args=CHROMIUM_ARGS
    )
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        requests = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(deck.as_uri())
        page.wait_for_selector(".reveal.ready", timeout=30_000)
        page.goto(deck.as_uri() + "#/2/1")  # 3.2 Scaled dot-product attention
        page.wait_for_function(
            "() => window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0"
            " && document.querySelectorAll('.present .MathJax_SVG').length > 0",
            timeout=60_000,
            polling=500,
        )
        slide = page.locator("section.present:not(.stack)")
        assert "$" not in slide.inner_text()  # every formula typeset
        page.screenshot(path=SCREENSHOTS / "ch03_slides.png")
    finally:
        browser.close()
    assert requests and all(u.split(":")[0] in ("file", "data") for u in requests)

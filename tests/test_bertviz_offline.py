"""Tests of utils.bertviz_offline: the rewritten views load nothing from the network.

The fast tests use random attention (L=2, H=3, T=5); the test marked slow uses MiniLM.
Whether the views really draw needs a browser: that is the browser test's job.
"""

import base64
import importlib.util
import re

import pytest
import torch

from utils import bertviz_offline
from utils.bertviz_offline import (
    head_view,
    head_view_html,
    local_js_sources,
    localize_html,
    model_view,
    model_view_html,
)

TOKENS = ["[CLS]", "tok_alpha", "tok_beta", "tok_gamma", "[SEP]"]
VIEWS = [head_view_html, model_view_html]
ROOT_ID = re.compile(r'<div id="(bertviz-[0-9a-f]+)"')
# What tests/test_notebooks.py looks for in stored outputs.
REMOTE_CODE = re.compile(
    r"<script[^>]+src=\\?[\"']https?://|require\.config\([^)]*https?://"
)


def random_attention(n_layers=2, n_heads=3, seq_len=5, batch_size=1):
    """L tensors (B, H, T, T) whose rows sum to 1."""
    torch.manual_seed(0)
    scores = torch.randn(n_layers, batch_size, n_heads, seq_len, seq_len)
    return tuple(scores.softmax(dim=-1))  # L x (B, H, T, T)


def test_local_js_sources_finds_the_three_libraries():
    sources = local_js_sources()
    assert set(sources) == {"requirejs", "d3", "jquery"}
    assert all(path.is_file() for path in sources.values())
    assert "d3js.org v5" in sources["d3"].read_text()[:200]


def test_local_js_sources_says_how_to_install_a_missing_package(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mpld3" else real_find_spec(name, *a),
    )
    with pytest.raises(FileNotFoundError, match=r"'mpld3' package.*pip install"):
        local_js_sources()


def test_raw_bertviz_html_loads_from_a_cdn():
    """The check below is not vacuous: bertviz's own HTML fails it."""
    from bertviz import head_view as raw_head_view

    raw = raw_head_view(random_attention(), TOKENS, html_action="return").data
    assert REMOTE_CODE.search(raw) and "cdnjs" in raw


@pytest.mark.parametrize("view", VIEWS, ids=lambda f: f.__name__)
def test_view_html_loads_nothing_remote(view):
    html = view(random_attention(), TOKENS)
    assert REMOTE_CODE.search(html) is None
    assert re.search(r"<script[^>]*\bsrc=", html) is None
    assert "cdnjs" not in html


@pytest.mark.parametrize("view", VIEWS, ids=lambda f: f.__name__)
def test_view_html_carries_the_local_libraries_and_tokens(view):
    html = view(random_attention(), TOKENS)
    sources = local_js_sources()
    assert sources["requirejs"].read_text() in html  # inlined as a script
    for name in ("d3", "jquery"):  # data: URLs in require.config's paths
        encoded = base64.b64encode(sources[name].read_bytes()).decode()
        assert f"{name}: 'data:text/javascript;base64,{encoded}'" in html
    assert all(f'"{token}"' in html for token in TOKENS)
    assert len(html.encode()) < 600_000  # libraries ~0.52 MB, data stored once


@pytest.mark.parametrize("view", VIEWS, ids=lambda f: f.__name__)
def test_view_html_two_calls_get_distinct_ids(view):
    first, second = (view(random_attention(), TOKENS) for _ in range(2))
    ids = ROOT_ID.findall(first) + ROOT_ID.findall(second)
    assert len(ids) == 2 and ids[0] != ids[1]
    assert ids[1] not in first and ids[0] not in second


def test_view_html_rounds_weights():
    html = head_view_html(random_attention(), TOKENS, decimals=2)
    numbers = re.findall(r"\d\.\d+", html.split('"attn": ', 1)[1].split("]]]]")[0])
    assert numbers and all(len(n) <= 4 for n in numbers)


@pytest.mark.parametrize("show", [head_view, model_view], ids=lambda f: f.__name__)
def test_views_display_one_offline_html_output(show, monkeypatch):
    shown = []
    monkeypatch.setattr(bertviz_offline, "display", shown.append)
    assert show(random_attention(), TOKENS) is None
    assert len(shown) == 1 and REMOTE_CODE.search(shown[0].data) is None
    assert ROOT_ID.search(shown[0].data)


BAD_INPUTS = {
    "numpy arrays": (
        [a.numpy() for a in random_attention()],
        TOKENS,
        "torch tensor.*torch.from_numpy",
    ),
    "one tensor, not a tuple": (random_attention()[0], TOKENS, "tuple or list"),
    "empty tuple": ((), TOKENS, "empty.*eager"),
    "wrong T": (random_attention(), TOKENS[:4], "T=5.*got 4 tokens"),
    "rank 3": ([a[0] for a in random_attention()], TOKENS, r"\(1, H, T, T\)"),
    "batch of 2": (random_attention(batch_size=2), TOKENS, r"\(1, H, T, T\)"),
    "layers differ": (
        random_attention() + random_attention(n_heads=2),
        TOKENS,
        "same shape",
    ),
    "token ids": (random_attention(), [1, 2, 3, 4, 5], "strings"),
    "one string": (random_attention(), "abcde", "list of T=5 strings"),
}


@pytest.mark.parametrize("view", VIEWS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", BAD_INPUTS, ids=str)
def test_view_html_rejects_bad_input_clearly(view, case):
    attention, tokens, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        view(attention, tokens)


def test_view_html_rejects_html_action():
    with pytest.raises(ValueError, match="html_action"):
        head_view_html(random_attention(), TOKENS, html_action="view")


def test_localize_html_rejects_html_it_does_not_know():
    with pytest.raises(RuntimeError, match="bertviz's HTML has changed"):
        localize_html("<div>not bertviz</div>")


@pytest.mark.slow
def test_views_of_minilm_are_offline_and_name_its_tokens(minilm):
    from utils.models import attention_maps

    model, tokenizer = minilm
    ids = tokenizer("The cat sat on the mat.", return_tensors="pt")["input_ids"]
    attention = attention_maps(model, ids)  # 6 x (1, 12, T, T)
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    for view in VIEWS:
        html = view(attention, tokens)
        assert REMOTE_CODE.search(html) is None
        assert all(f'"{token}"' in html for token in tokens)


def test_view_html_warns_when_the_view_is_large(monkeypatch):
    monkeypatch.setattr(bertviz_offline, "LARGE_VIEW_BYTES", 100_000)
    with pytest.warns(UserWarning, match="include_layers"):
        model_view_html(random_attention(), TOKENS)

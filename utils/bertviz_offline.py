"""bertviz's head and model views, drawn without the network.

bertviz builds its views from HTML and JavaScript that load require.js, d3 and jQuery
from a public CDN when the cell output is drawn, so offline the output stays blank.
Here we ask bertviz for its HTML (`html_action="return"`) and rewrite it:

- the `<script src=...require.min.js>` tag becomes an inline script holding the
  require.js text, so that it runs before bertviz's own script;
- the CDN addresses of d3 and jQuery in bertviz's `require.config({paths: ...})`
  become `data:` URLs holding the library text, which require.js loads as modules.

The three files come from installed PyPI packages (see `LIBRARIES`), never from the
course's own repository. Each view is self-contained, so every stored output still
draws on its own, and several views share one page: a second copy of require.js sees
the first one's `define` and leaves it in place.

JupyterLab runs the scripts of trusted outputs only: a view draws when its cell runs,
and a stored one in a notebook opened fresh from git stays blank (a "Layer:" box and
nothing else) until the cell runs again or the notebook is trusted
(`jupyter trust NOTEBOOK`, or "Trust Notebook" in the command palette).
"""

import base64
import functools
import importlib.util
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from IPython.display import HTML, display


@dataclass(frozen=True)
class JsLibrary:
    """Where one JavaScript library lives inside an installed PyPI package."""

    distribution: str  # the name pip installs, pinned in requirements.txt
    package: str  # the import name, looked up without importing it
    relative_path: str  # the file inside the package folder
    version_pattern: str  # regex whose group 1 is the version written in the file
    major: str  # the major version bertviz's code works with


LIBRARIES = {
    "requirejs": JsLibrary(
        "nbclassic",
        "nbclassic",
        "static/components/requirejs/require.js",
        r"version = '(\d+\.\d+\.\d+)'",
        "2",
    ),
    "d3": JsLibrary(
        "mpld3", "mpld3", "js/d3.v5.min.js", r"d3js\.org v(\d+\.\d+\.\d+)", "5"
    ),
    "jquery": JsLibrary(
        "nbclassic",
        "nbclassic",
        "static/components/jquery/dist/jquery.min.js",
        r"jQuery v(\d+\.\d+\.\d+)",
        "3",
    ),
}
INSTALL_HINT = (
    "install the pinned packages that carry them: `pip install -r requirements.txt` "
    "(or `pip install nbclassic==1.3.3 mpld3==0.5.12`)"
)
# What bertviz 1.4.1 writes: one require.js tag, and CDN paths for d3 and jQuery.
_REQUIRE_TAG = re.compile(
    r'<script src="https?://[^"]*/require(?:\.min)?\.js">\s*</script>'
)
_CDN_PATH = re.compile(r"""(\b(d3|jquery)\s*:\s*)(['"])https?://[^'"]*\3""")
# bertviz's template marker sits in a comment too, so the comment repeats the data.
_PARAMS_COMMENT = re.compile(
    r"^(\s*const params = )(.*); // HACK: \2 is a template marker[^\n]*$", re.MULTILINE
)
# Above this a view makes the notebook slow to save and scroll; bertviz suggests
# fewer layers or a shorter input.
LARGE_VIEW_BYTES = 5_000_000
# The same test that the notebook checks apply to stored outputs.
REMOTE_CODE = re.compile(
    r"<script[^>]+src=\\?[\"']https?://|require\.config\([^)]*https?://"
)


def local_js_sources() -> dict[str, Path]:
    """Find the local copies of require.js, d3 and jQuery that the views inline.

    Returns:
        `{"requirejs": path, "d3": path, "jquery": path}`, each an existing file.

    Raises:
        FileNotFoundError: a package or file is missing; the message names it and
            says how to install it.

    Introduced in chapter 4.
    """
    found, missing = {}, []
    for name, lib in LIBRARIES.items():
        spec = importlib.util.find_spec(lib.package)
        folders = list(spec.submodule_search_locations or []) if spec else []
        path = Path(folders[0]) / lib.relative_path if folders else None
        if path is None or not path.is_file():
            missing.append(
                f"{name} ({lib.relative_path} of the {lib.distribution!r} package)"
            )
        else:
            found[name] = path
    if missing:
        raise FileNotFoundError(
            "bertviz's views need local copies of JavaScript libraries, and these "
            f"are missing: {'; '.join(missing)}. To fix it, {INSTALL_HINT}."
        )
    return found


@functools.cache
def _library_code() -> dict[str, bytes]:
    """Bytes of each library, read once per kernel, its major version checked."""
    code = {}
    for name, path in local_js_sources().items():
        text = path.read_bytes()
        lib = LIBRARIES[name]
        match = re.search(lib.version_pattern, text.decode("utf-8"))
        if match is None or match.group(1).split(".")[0] != lib.major:
            found = match.group(1) if match else "an unknown version"
            raise RuntimeError(
                f"{path} holds {name} {found}, but bertviz needs version "
                f"{lib.major}.x; {INSTALL_HINT}"
            )
        code[name] = text
    return code


def _check_attention(attention: Sequence[torch.Tensor]) -> None:
    """Raise ValueError unless attention is L >= 1 tensors, each (1, H, T, T)."""
    if not isinstance(attention, tuple | list):
        raise ValueError(
            "attention must be a tuple or list of torch tensors, one per layer, each "
            f"(1, H, T, T); got a {type(attention).__name__}; pass the whole "
            "`outputs.attentions` of a model called with output_attentions=True"
        )
    if len(attention) == 0:
        raise ValueError(
            "attention is empty, so there is no layer to draw; a transformers model "
            "returns no weights unless loaded with attn_implementation='eager'"
        )
    for i, layer in enumerate(attention):
        if not isinstance(layer, torch.Tensor):
            raise ValueError(
                f"attention[{i}] must be a torch tensor (1, H, T, T), got a "
                f"{type(layer).__name__}; bertviz needs torch tensors, so convert "
                "numpy arrays with torch.from_numpy(...)"
            )
        if layer.dim() != 4 or layer.size(0) != 1 or layer.size(2) != layer.size(3):
            raise ValueError(
                f"attention[{i}] must have shape (1, H, T, T), got "
                f"{tuple(layer.shape)}; keep one example with its batch axis, "
                "e.g. [a[:1] for a in attentions] or a.unsqueeze(0)"
            )
        if layer.shape != attention[0].shape:
            raise ValueError(
                f"every layer must have the same shape; attention[0] is "
                f"{tuple(attention[0].shape)} but attention[{i}] is "
                f"{tuple(layer.shape)}"
            )


def _check_tokens(tokens: Sequence[str], seq_len: int) -> None:
    """Raise ValueError unless tokens is a sequence of seq_len strings."""
    if isinstance(tokens, str) or len(tokens) != seq_len:
        what = "characters" if isinstance(tokens, str) else "tokens"
        raise ValueError(
            f"tokens must be a list of T={seq_len} strings, one per position, got "
            f"{len(tokens)} {what}; pass tokenizer.convert_ids_to_tokens("
            "input_ids[0]) for the same input as the attention"
        )
    if not all(isinstance(token, str) for token in tokens):
        raise ValueError(
            "tokens must all be strings (token texts, not token ids); use "
            "tokenizer.convert_ids_to_tokens(...)"
        )


def _rounded(attention: Sequence[torch.Tensor], decimals: int) -> list[torch.Tensor]:
    # float64 after rounding prints as 0.1234 in bertviz's JSON, not 0.12340000271...
    return [
        torch.round(a.detach().cpu().double(), decimals=decimals) for a in attention
    ]


def _inline_script(code: bytes) -> str:
    # "</script" inside the text would end the tag early; "<\/" means the same in JS.
    text = re.sub(r"</(script)", r"<\\/\1", code.decode("utf-8"), flags=re.IGNORECASE)
    return '<script type="text/javascript">\n' + text + "\n</script>"


def _data_url(code: bytes) -> str:
    # require.js adds no ".js" to, and no baseUrl before, a path starting "data:".
    encoded = base64.b64encode(code).decode("ascii")
    return "data:text/javascript;base64," + encoded


def localize_html(html: str) -> str:
    """Rewrite bertviz's HTML so that it loads its libraries from local copies.

    Args:
        html: what bertviz's `head_view` or `model_view` returns with
            `html_action="return"` (the `.data` of its `HTML` object).

    Returns:
        The same view, with require.js inlined and d3 and jQuery as `data:` URLs.

    Raises:
        RuntimeError: the HTML does not look like bertviz 1.4.1's, so the rewrite
            could not remove every CDN address.

    Introduced in chapter 4.
    """
    code = _library_code()
    html, n_tags = _REQUIRE_TAG.subn(lambda m: _inline_script(code["requirejs"]), html)
    urls = {name: _data_url(code[name]) for name in ("d3", "jquery")}
    html, n_paths = _CDN_PATH.subn(lambda m: f"{m.group(1)}'{urls[m.group(2)]}'", html)
    html = _PARAMS_COMMENT.sub(lambda m: f"{m.group(1)}{m.group(2)};", html)
    if n_tags != 1 or n_paths != 2 or REMOTE_CODE.search(html):
        raise RuntimeError(
            f"bertviz's HTML has changed (found {n_tags} require.js tag(s) and "
            f"{n_paths} library paths, expected 1 and 2): the offline rewrite in "
            "utils/bertviz_offline.py needs updating; requirements.txt pins "
            "bertviz==1.4.1"
        )
    return html


def _view_html(draw, attention, tokens, decimals: int, kwargs: dict) -> str:
    if "html_action" in kwargs:
        raise ValueError("html_action is set here; leave it out")
    _check_attention(attention)
    _check_tokens(tokens, seq_len=attention[0].size(-1))
    view = draw(
        _rounded(attention, decimals), list(tokens), html_action="return", **kwargs
    )
    html = localize_html(view.data)
    if len(html) > LARGE_VIEW_BYTES:
        warnings.warn(
            f"this view is {len(html) / 1e6:.1f} MB of HTML; pass include_layers=[...]"
            " (and include_heads for the model view) or a shorter input",
            stacklevel=3,
        )
    return html


def head_view_html(
    attention: Sequence[torch.Tensor],
    tokens: Sequence[str],
    decimals: int = 3,
    **kwargs,
) -> str:
    """HTML of bertviz's head view that draws offline: one layer, heads as colours.

    Args:
        attention: L tensors (one per layer), each (1, H, T, T), e.g. the
            `attentions` of a `transformers` model called with
            `output_attentions=True` on one input.
        tokens: the T token texts of that input.
        decimals: attention weights are rounded to this many decimals, which keeps
            the output small and changes nothing that the eye can see.
        **kwargs: passed to `bertviz.head_view` (`layer`, `heads`,
            `sentence_b_start`, `include_layers`, `prettify_tokens`).

    Returns:
        A self-contained HTML fragment: 0.52 MB of library code plus about 7 bytes
        per weight (L * H * T * T at 3 decimals; MiniLM on 13 tokens: 0.62 MB).
        `sentence_b_start` stores the weights twice (all, then its four quarters).

    Raises:
        ValueError: `attention` or `tokens` has the wrong type or shape.
        FileNotFoundError: the local JavaScript libraries are not installed.

    Introduced in chapter 4.
    """
    from bertviz import head_view as draw

    return _view_html(draw, attention, tokens, decimals, kwargs)


def model_view_html(
    attention: Sequence[torch.Tensor],
    tokens: Sequence[str],
    decimals: int = 3,
    **kwargs,
) -> str:
    """HTML of bertviz's model view that draws offline: a grid of layers x heads.

    Args:
        attention: L tensors (one per layer), each (1, H, T, T).
        tokens: the T token texts of that input.
        decimals: attention weights are rounded to this many decimals.
        **kwargs: passed to `bertviz.model_view` (`display_mode`, `include_layers`,
            `include_heads`, `sentence_b_start`, `prettify_tokens`).

    Returns:
        A self-contained HTML fragment: 0.52 MB of library code plus about 7 bytes
        per weight (L * H * T * T at 3 decimals; MiniLM on 13 tokens: 0.62 MB).

    Raises:
        ValueError: `attention` or `tokens` has the wrong type or shape.
        FileNotFoundError: the local JavaScript libraries are not installed.

    Introduced in chapter 4.
    """
    from bertviz import model_view as draw

    return _view_html(draw, attention, tokens, decimals, kwargs)


def head_view(
    attention: Sequence[torch.Tensor], tokens: Sequence[str], **kwargs
) -> None:
    """Show bertviz's head view in the notebook, with no network needed.

    Args:
        attention: L tensors (one per layer), each (1, H, T, T).
        tokens: the T token texts of that input.
        **kwargs: passed to `head_view_html` (`decimals`) and bertviz (`layer`,
            `heads`, `sentence_b_start`, `include_layers`).

    Raises:
        ValueError: `attention` or `tokens` has the wrong type or shape.
        FileNotFoundError: the local JavaScript libraries are not installed.

    Introduced in chapter 4.
    """
    display(HTML(head_view_html(attention, tokens, **kwargs)))


def model_view(
    attention: Sequence[torch.Tensor], tokens: Sequence[str], **kwargs
) -> None:
    """Show bertviz's model view (every layer and head) in the notebook, offline.

    Args:
        attention: L tensors (one per layer), each (1, H, T, T).
        tokens: the T token texts of that input.
        **kwargs: passed to `model_view_html` (`decimals`) and bertviz
            (`display_mode`, `include_layers`, `include_heads`).

    Raises:
        ValueError: `attention` or `tokens` has the wrong type or shape.
        FileNotFoundError: the local JavaScript libraries are not installed.

    Introduced in chapter 4.
    """
    display(HTML(model_view_html(attention, tokens, **kwargs)))

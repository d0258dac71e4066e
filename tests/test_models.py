"""Tests of utils.models: the offline loaders, the float32 cache of SmolLM2, and
attention maps."""

import json
import os
import subprocess
import sys

import pytest
import torch

import utils.models as models
from utils.models import (
    attention_maps,
    load_smollm2,
    package_dir,
    smollm2_cache_path,
    smollm2_gguf_path,
)

SMOLLM2_PARAMETERS = 134_515_008
LOAD_SECONDS = 5.0


def _check_attention(maps, n_layers: int, n_heads: int, n_tokens: int) -> None:
    assert len(maps) == n_layers
    for layer in maps:
        assert layer.shape == (1, n_heads, n_tokens, n_tokens)
        torch.testing.assert_close(
            layer.sum(-1), torch.ones(1, n_heads, n_tokens), atol=1e-5, rtol=0
        )


# --- loading


@pytest.mark.slow
def test_load_smollm2_eval_mode_with_tied_embeddings(smollm2) -> None:
    model, tokenizer = smollm2

    n_parameters = sum(p.numel() for p in model.parameters())  # counts shared once

    assert not model.training
    assert n_parameters == SMOLLM2_PARAMETERS
    assert next(model.parameters()).dtype == torch.float32
    embedding, head = model.get_input_embeddings().weight, model.lm_head.weight
    assert embedding.data_ptr() == head.data_ptr()  # one storage, not a copy
    assert tokenizer.chat_template


@pytest.mark.slow
def test_load_smollm2_cached_load_in_new_process_is_fast() -> None:
    smollm2_cache_path()  # convert here if needed, so the child only loads
    code = (
        "import time\n"
        "from utils.models import load_smollm2\n"
        "start = time.perf_counter()\n"
        "load_smollm2()\n"
        "print(time.perf_counter() - start)\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    seconds = float(done.stdout.strip().splitlines()[-1])
    assert seconds <= LOAD_SECONDS, f"cached load took {seconds:.1f} s"


def test_package_dir_finds_installed_model_packages() -> None:
    assert package_dir(models.SMOLLM2_PACKAGE).is_dir()
    assert smollm2_gguf_path().suffix == ".gguf"
    assert (models.minilm_path() / "config.json").exists()


def test_package_dir_missing_package_says_make_setup() -> None:
    with pytest.raises(ModuleNotFoundError, match="make setup"):
        package_dir("no_such_model_package_xyz")


# --- the conversion cache (no conversion is ever run here)


@pytest.fixture
def conversions(tmp_path, monkeypatch) -> list:
    """Point the cache at tmp_path and record calls to the converter instead."""
    monkeypatch.setenv("LLM_COURSE_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(
        models, "_convert_smollm2", lambda gguf, target: calls.append((gguf, target))
    )
    return calls


@pytest.mark.parametrize(
    "stamp",
    [None, "", "{not json", json.dumps({"gguf": "old.gguf", "size": 1}), "[]"],
    ids=["missing", "empty", "corrupt", "wrong", "list"],
)
def test_smollm2_cache_path_converts_again_on_bad_stamp(
    conversions, tmp_path, stamp
) -> None:
    folder = tmp_path / models.SMOLLM2_CACHE_NAME
    if stamp is not None:
        folder.mkdir()
        (folder / "COMPLETE.json").write_text(stamp)

    assert smollm2_cache_path() == folder
    assert conversions == [(smollm2_gguf_path(), folder)]


def test_smollm2_cache_path_keeps_complete_cache(conversions, tmp_path) -> None:
    gguf = smollm2_gguf_path()
    folder = tmp_path / models.SMOLLM2_CACHE_NAME
    folder.mkdir()
    stamp = {"gguf": gguf.name, "size": os.path.getsize(gguf)}
    (folder / "COMPLETE.json").write_text(json.dumps(stamp))

    assert smollm2_cache_path() == folder
    assert conversions == []


# --- attention maps


@pytest.mark.slow
def test_attention_maps_smollm2_rows_sum_to_one_and_causal(smollm2) -> None:
    model, tokenizer = smollm2
    ids = tokenizer("The cat sat on the mat because it was", return_tensors="pt")
    n_tokens = ids["input_ids"].shape[1]

    maps = attention_maps(model, ids["input_ids"])

    _check_attention(maps, n_layers=30, n_heads=9, n_tokens=n_tokens)
    future = torch.ones(n_tokens, n_tokens, dtype=torch.bool).triu(1)
    for layer in maps:
        assert (layer[..., future] == 0).all()  # no token looks ahead


def test_attention_maps_tiny_llama_is_causal(tiny_llama) -> None:
    model, _ = tiny_llama
    torch.manual_seed(0)
    ids = torch.randint(0, 97, (1, 8))

    maps = attention_maps(model, ids)

    _check_attention(maps, n_layers=2, n_heads=4, n_tokens=8)
    torch.testing.assert_close(maps[0].triu(1), torch.zeros(1, 4, 8, 8))


def test_attention_maps_without_attn_weights_raises(tiny_llama_sdpa) -> None:
    ids = torch.arange(8)[None, :]  # (1, T)
    with pytest.raises(RuntimeError, match="attn_weights=True"):
        attention_maps(tiny_llama_sdpa, ids)


@pytest.mark.slow
def test_load_smollm2_default_attention_refuses_maps() -> None:
    model, tokenizer = load_smollm2()  # fused attention: returns no weights
    ids = tokenizer("Hello there", return_tensors="pt")["input_ids"]

    with pytest.raises(RuntimeError, match="attn_weights"):
        attention_maps(model, ids)


@pytest.mark.slow
def test_attention_maps_minilm_six_layers_see_both_ways(minilm) -> None:
    model, tokenizer = minilm
    batch = tokenizer("Attention looks both ways in an encoder.", return_tensors="pt")
    n_tokens = batch["input_ids"].shape[1]

    maps = attention_maps(model, **batch)

    _check_attention(maps, n_layers=6, n_heads=12, n_tokens=n_tokens)
    future = torch.ones(n_tokens, n_tokens, dtype=torch.bool).triu(1)
    assert (maps[0][..., future] > 0).all()  # not causal, unlike SmolLM2

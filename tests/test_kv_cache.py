"""Tests of the KV cache of chapter 09 (`KVCache`, `kv_cache_update`).

Cached decoding must give the logits of a full recomputation at every step, with the
positions offset by what is cached and the causal mask kept within a prefill.
"""

import pytest
import torch
from test_llama import tiny_hf

from utils.reference.llama import (
    KVCache,
    decode_step,
    decode_threads,
    from_hf,
    generate,
    kv_cache_update,
)

CONTEXT = 64


@pytest.fixture(scope="module")
def tiny():
    return from_hf(tiny_hf(n_kv_heads=2, context=CONTEXT))


def _cached_vs_full(model, prompt_len: int, n_steps: int, atol: float = 1e-5):
    """Prefill a random prompt, decode greedily, compare every step with no cache."""
    torch.manual_seed(prompt_len)
    idx = torch.randint(0, model.config.vocab_size, (2, prompt_len))
    cache = KVCache.for_model(model, batch_size=2)
    with torch.inference_mode():
        logits = model(idx, cache=cache)  # prefill: (B, T, V) for every position
        torch.testing.assert_close(logits, model(idx), atol=atol, rtol=0)
        for _ in range(n_steps):
            next_id = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)
            logits = model(next_id, cache=cache)  # (B, 1, V)
            full = model(idx)[:, -1:]  # recompute the whole sequence
            torch.testing.assert_close(logits, full, atol=atol, rtol=0)
            assert cache.length == idx.size(1)


@pytest.mark.parametrize(("prompt_len", "n_steps"), [(1, 8), (5, 8), (CONTEXT - 4, 4)])
def test_cache_equals_recomputation_every_step(tiny, prompt_len, n_steps):
    _cached_vs_full(tiny, prompt_len, n_steps)


def test_cache_chunked_prefill_offsets_positions(tiny):
    idx = torch.randint(0, 97, (1, 12))
    cache = KVCache.for_model(tiny)
    with torch.inference_mode():
        first = tiny(idx[:, :7], cache=cache)
        second = tiny(idx[:, 7:], cache=cache)  # 5 queries after 7 cached keys
        full = tiny(idx)
    torch.testing.assert_close(torch.cat([first, second], 1), full, atol=1e-5, rtol=0)


def test_cache_prefill_is_causal(tiny):
    idx = torch.randint(0, 97, (1, 9))
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % 97
    with torch.inference_mode():
        a = tiny(idx, cache=KVCache.for_model(tiny))
        b = tiny(changed, cache=KVCache.for_model(tiny))
    torch.testing.assert_close(a[:, :5], b[:, :5])


def test_cache_reset_empties_it(tiny):
    cache = KVCache.for_model(tiny, max_len=16)
    with torch.inference_mode():
        tiny(torch.randint(0, 97, (1, 6)), cache=cache)
        assert cache.length == 6 and cache.keys.abs().sum() > 0
        cache.reset()
        assert cache.length == 0 and cache.keys.abs().sum() == 0
        idx = torch.randint(0, 97, (1, 4))
        torch.testing.assert_close(tiny(idx, cache=cache), tiny(idx))


def test_cache_full_is_a_clear_error(tiny):
    cache = KVCache.for_model(tiny, max_len=8)
    with torch.inference_mode():
        tiny(torch.zeros(1, 6, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="exceed the limit of 8"):
            tiny(torch.zeros(1, 3, dtype=torch.long), cache=cache)


def test_cache_wrong_batch_is_a_clear_error(tiny):
    cache = KVCache.for_model(tiny, batch_size=1)
    with pytest.raises(ValueError, match="batch size 1"):
        tiny(torch.zeros(2, 3, dtype=torch.long), cache=cache)


def test_kv_cache_update_writes_in_place():
    cache_k, cache_v = torch.zeros(1, 2, 6, 4), torch.zeros(1, 2, 6, 4)
    k, v = torch.ones(1, 2, 2, 4), 2 * torch.ones(1, 2, 2, 4)
    keys, values = kv_cache_update(cache_k, cache_v, k, v, start=3)
    assert keys.shape == values.shape == (1, 2, 5, 4)
    assert keys.data_ptr() == cache_k.data_ptr()  # a view, not a copy
    torch.testing.assert_close(cache_k[:, :, 3:5], k)
    assert cache_k[:, :, :3].abs().sum() == 0 and cache_k[:, :, 5:].abs().sum() == 0
    with pytest.raises(ValueError, match="holds 6 positions"):
        kv_cache_update(cache_k, cache_v, k, v, start=5)
    wrong_heads = torch.ones(1, 3, 1, 4)
    with pytest.raises(ValueError, match="do not match the cache"):
        kv_cache_update(cache_k, cache_v, wrong_heads, wrong_heads, start=0)


@pytest.mark.parametrize(
    ("k", "v", "start", "match"),
    [
        (torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4), -1, "start must be"),
        (torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4), 1.0, "start must be"),
        (torch.ones(1, 2, 1, 4), torch.ones(1, 2, 2, 4), 0, r"v \(1, 2, 2, 4\)"),
        (torch.ones(2, 1, 4), torch.ones(2, 1, 4), 0, r"k and v must both be"),
    ],
)
def test_kv_cache_update_rejects_bad_input(k, v, start, match):
    cache_k, cache_v = torch.zeros(1, 2, 6, 4), torch.zeros(1, 2, 6, 4)
    with pytest.raises(ValueError, match=match):
        kv_cache_update(cache_k, cache_v, k, v, start)
    assert cache_k.abs().sum() == 0  # nothing written


@pytest.mark.parametrize(
    ("sizes", "error", "match"),
    [
        ({"max_len": 0}, ValueError, r"max_len \(S_max.*at least 1, got 0"),
        ({"max_len": -1}, ValueError, "max_len"),
        ({"n_kv_heads": 0}, ValueError, r"n_kv_heads \(H_kv"),
        ({"batch_size": -2}, ValueError, "batch_size"),
        ({"head_dim": 8.0}, TypeError, "head_dim .* must be a whole number"),
    ],
)
def test_kv_cache_rejects_bad_sizes(sizes, error, match):
    args = {"n_layers": 2, "batch_size": 1, "n_kv_heads": 2, "max_len": 8}
    with pytest.raises(error, match=match):
        KVCache(**(args | {"head_dim": 8} | sizes))


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        ({"n_layers": 3}, "L=2, H_kv=2, Dh=8"),
        ({"n_kv_heads": 4}, "L=2, H_kv=2, Dh=8"),
        ({"head_dim": 4}, "L=2, H_kv=2, Dh=8"),
        ({"dtype": torch.float64}, "torch.float64 on cpu, the model torch.float32"),
    ],
)
def test_cache_for_another_model_is_a_clear_error(tiny, sizes, match):
    args = {"n_layers": 2, "batch_size": 1, "n_kv_heads": 2, "max_len": 16}
    cache = KVCache(**(args | {"head_dim": 8} | sizes))
    with pytest.raises(ValueError, match=match):
        tiny(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match=match):
        decode_step(tiny, torch.zeros(1, 1, dtype=torch.long), cache)


def test_cache_of_another_kind_is_a_type_error(tiny):
    with pytest.raises(TypeError, match="cache must be a KVCache"):
        tiny(torch.zeros(1, 3, dtype=torch.long), cache=(torch.zeros(1),))


def test_kv_cache_bytes_per_token():
    cache = KVCache(n_layers=30, batch_size=1, n_kv_heads=3, max_len=4, head_dim=64)
    assert cache.bytes_per_token() == 46_080


def test_generate_with_and_without_cache_agree(tiny):
    idx = torch.randint(0, 97, (2, 5))
    assert torch.equal(
        generate(tiny, idx, 20), generate(tiny, idx, 20, use_cache=False)
    )


def _fast_vs_modules(model, prompt_len: int, n_steps: int, atol: float = 1e-5):
    """Decode with `decode_step` and with the modules side by side; compare both."""
    torch.manual_seed(prompt_len)
    idx = torch.randint(0, model.config.vocab_size, (2, prompt_len))
    slow, fast = KVCache.for_model(model, 2), KVCache.for_model(model, 2)
    with torch.inference_mode():
        next_id = model(idx, cache=slow)[:, -1].argmax(-1, keepdim=True)
        model(idx, cache=fast)
        for _ in range(n_steps):
            expected = model(next_id, cache=slow)[:, -1]  # (B, V)
            logits = decode_step(model, next_id, fast)
            torch.testing.assert_close(logits, expected, atol=atol, rtol=1e-5)
            assert fast.length == slow.length
            torch.testing.assert_close(fast.keys, slow.keys, atol=atol, rtol=1e-5)
            torch.testing.assert_close(fast.values, slow.values, atol=atol, rtol=1e-5)
            next_id = expected.argmax(-1, keepdim=True)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize(("prompt_len", "n_steps"), [(1, 6), (CONTEXT - 4, 4)])
def test_decode_step_equals_the_modules(n_kv_heads, prompt_len, n_steps):
    model = from_hf(tiny_hf(n_kv_heads=n_kv_heads, context=CONTEXT))
    _fast_vs_modules(model, prompt_len, n_steps)


@pytest.mark.parametrize(
    ("token", "cache_batch", "filled", "match"),
    [
        (torch.tensor([[1, 2]]), 1, 3, r"\(B, 1\) ids"),
        (torch.tensor([1]), 1, 3, r"\(B, 1\) ids"),
        (torch.tensor([[1]]), 2, 3, "batch size 2"),
        (torch.tensor([[1]]), 1, CONTEXT, "exceed the limit"),
    ],
)
def test_decode_step_rejects_bad_input(tiny, token, cache_batch, filled, match):
    cache = KVCache.for_model(tiny, cache_batch)
    cache.advance(filled)
    with pytest.raises(ValueError, match=match):
        decode_step(tiny, token, cache)


def test_generate_restores_the_thread_count(tiny):
    threads = torch.get_num_threads()
    assert decode_threads(tiny) in (1, threads)
    generate(tiny, torch.randint(0, 97, (1, 5)), 4)
    assert torch.get_num_threads() == threads


@pytest.mark.slow
def test_cache_equals_recomputation_smollm2():
    from utils.models import load_smollm2

    hf, _ = load_smollm2()
    model = from_hf(hf)
    _cached_vs_full(model, prompt_len=5, n_steps=6, atol=1e-4)
    # 30 blocks of float32 rounding in another order: about 2e-4 on logits near 20
    _fast_vs_modules(model, prompt_len=5, n_steps=6, atol=5e-4)

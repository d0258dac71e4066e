"""Tests of the by-hand Q4_1 decoder and the memory table, against `gguf`."""

import gguf
import numpy as np
import pytest

from utils.reference.quant import (
    bits_per_weight,
    decode_q4_1_block,
    file_storage,
    find_tensor,
    memory_table,
    q4_1_block,
)

Q4_1 = gguf.GGMLQuantizationType.Q4_1


def test_decode_q4_1_equals_gguf_on_synthetic_blocks():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(3, 64)).astype(np.float32)
    packed = gguf.quants.quantize(weights, Q4_1)  # (3, 2 * 20) uint8
    expected = gguf.quants.dequantize(packed, Q4_1)  # (3, 64)
    for row in range(3):
        for block in range(2):
            raw = packed[row, 20 * block : 20 * (block + 1)]
            got = decode_q4_1_block(raw).values()
            np.testing.assert_array_equal(
                got, expected[row, 32 * block : 32 * (block + 1)]
            )


def test_decode_q4_1_known_block():
    # d = 0.5, m = -1.0 (fp16 little-endian), codes 0..15 then 15..0
    low, high = np.arange(16, dtype=np.uint8), np.arange(15, -1, -1, dtype=np.uint8)
    raw = np.concatenate(
        [np.array([0.5, -1.0], dtype="<f2").view(np.uint8), low | (high << 4)]
    )
    block = decode_q4_1_block(raw.tobytes())
    assert (block.scale, block.minimum) == (0.5, -1.0)
    np.testing.assert_array_equal(block.codes, np.concatenate([low, high]))
    assert block.values()[0] == -1.0 and block.values()[15] == 6.5
    assert block.values()[16] == 6.5 and block.values()[31] == -1.0


@pytest.mark.parametrize(
    ("raw", "message"),
    [(np.zeros(19, np.uint8), "20 bytes"), (np.zeros(20, np.float32), "uint8")],
)
def test_decode_q4_1_bad_input_explains(raw, message):
    with pytest.raises(ValueError, match=message):
        decode_q4_1_block(raw)


def test_bits_per_weight_and_memory_table():
    assert bits_per_weight("fp32") == 32 and bits_per_weight("bf16") == 16
    assert bits_per_weight("Q8_0") == 8.5  # 32 int8 + an fp16 scale
    assert bits_per_weight("Q4_0") == 4.5  # 32 nibbles + an fp16 scale
    assert bits_per_weight("Q4_1") == 5.0  # 32 nibbles + fp16 scale and minimum
    assert memory_table(64, ("fp32", "Q4_1")) == [
        ("fp32", 32.0, 256),
        ("Q4_1", 5.0, 40),
    ]
    with pytest.raises(ValueError, match="unknown format"):
        bits_per_weight("int3")


@pytest.fixture(scope="module")
def reader():
    from utils.models import smollm2_gguf_path

    return gguf.GGUFReader(smollm2_gguf_path())


@pytest.mark.slow
def test_q4_1_blocks_of_smollm2_match_gguf(reader):
    tensor = find_tensor(reader, "blk.3.ffn_up.weight")
    for row in (0, 7, 1535):
        expected = gguf.quants.dequantize(tensor.data[row : row + 1], Q4_1)[0]
        for block in (0, 5, 17):
            got = decode_q4_1_block(q4_1_block(tensor, row, block)).values()
            np.testing.assert_array_equal(got, expected[32 * block : 32 * (block + 1)])


@pytest.mark.slow
def test_smollm2_file_storage_and_bad_lookups(reader):
    storage = file_storage(reader)
    assert sum(n for n, _ in storage.values()) == 134_515_008
    assert storage["Q4_1"][1] * 8 == storage["Q4_1"][0] * 5
    with pytest.raises(KeyError, match="no tensor"):
        find_tensor(reader, "blk.0.mlp.weight")
    with pytest.raises(ValueError, match="not Q4_1"):
        q4_1_block(find_tensor(reader, "token_embd.weight"))
    with pytest.raises(ValueError, match="rows"):
        q4_1_block(find_tensor(reader, "blk.0.attn_q.weight"), row=576)

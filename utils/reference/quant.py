"""4-bit weights by hand: one Q4_1 block of a GGUF file, and what each format costs.

GGUF's Q4_1 format cuts a row of weights into blocks of 32. Each block stores 20
bytes: an fp16 scale d, an fp16 minimum m, then 16 bytes holding 32 unsigned 4-bit
codes q in 0..15. Byte j holds element j in its low 4 bits and element j + 16 in its
high 4 bits. A weight comes back as d * q + m.
"""

from dataclasses import dataclass

import gguf
import numpy as np

Q4_1_BLOCK_SIZE = 32  # weights per block
Q4_1_BLOCK_BYTES = 20  # 2 (d) + 2 (m) + 16 (32 codes of 4 bits)


@dataclass(frozen=True)
class Q41Block:
    """One Q4_1 block, decoded into its parts.

    Introduced in chapter 9.
    """

    scale: float  # d, the step between two neighbouring codes
    minimum: float  # m, the value of code 0
    codes: np.ndarray  # (32,) uint8 in 0..15, in weight order

    def values(self) -> np.ndarray:
        """The 32 weights, d * q + m, as float32."""
        return np.float32(self.scale) * self.codes.astype(np.float32) + np.float32(
            self.minimum
        )


def decode_q4_1_block(raw: np.ndarray | bytes) -> Q41Block:
    """Split the 20 bytes of a Q4_1 block into scale, minimum and 32 codes.

    Args:
        raw: the block's 20 bytes, as a uint8 array or bytes.

    Returns:
        A `Q41Block`; its `values()` are the 32 weights.

    Raises:
        ValueError: `raw` is not 20 bytes of uint8.

    Introduced in chapter 9.
    """
    raw = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, bytes) else raw
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
        raise ValueError(f"raw must be uint8 bytes, got {getattr(raw, 'dtype', raw)}")
    if raw.shape != (Q4_1_BLOCK_BYTES,):
        raise ValueError(
            f"a Q4_1 block is {Q4_1_BLOCK_BYTES} bytes, got shape {raw.shape}; "
            "slice one block with q4_1_block(tensor, row, block)"
        )

    # 1) two little-endian fp16 numbers: the scale d and the minimum m
    scale, minimum = raw[:4].copy().view("<f2").astype(np.float32)

    # 2) 16 bytes of codes: low nibbles are weights 0..15, high nibbles 16..31
    packed = raw[4:]
    codes = np.concatenate([packed & 0x0F, packed >> 4])  # (16,) x 2 -> (32,)
    return Q41Block(float(scale), float(minimum), codes)


def find_tensor(reader: gguf.GGUFReader, name: str) -> gguf.ReaderTensor:
    """The tensor called `name` in a GGUF file.

    Raises:
        KeyError: no such tensor; the message lists a few names that exist.

    Introduced in chapter 9.
    """
    for tensor in reader.tensors:
        if tensor.name == name:
            return tensor
    some = ", ".join(t.name for t in reader.tensors[:5])
    raise KeyError(f"no tensor {name!r} in the file; names look like: {some}, ...")


def q4_1_block(tensor: gguf.ReaderTensor, row: int = 0, block: int = 0) -> np.ndarray:
    """The raw 20 bytes of block `block` of row `row` of a Q4_1 tensor.

    Args:
        tensor: a tensor from `gguf.GGUFReader(...).tensors`, stored as Q4_1.
        row: which row of the weight matrix (rows are the `out_features` of
            `nn.Linear`).
        block: which block of 32 weights along the row.

    Returns:
        (20,) uint8.

    Raises:
        ValueError: the tensor is not Q4_1, or row/block lie outside it.

    Introduced in chapter 9.
    """
    if tensor.tensor_type != gguf.GGMLQuantizationType.Q4_1:
        raise ValueError(
            f"{tensor.name} is stored as {tensor.tensor_type.name}, not Q4_1; pick "
            "another tensor (in SmolLM2's file the attention and MLP matrices are)"
        )
    data = tensor.data  # (rows, blocks_per_row * 20) uint8
    n_blocks = data.shape[1] // Q4_1_BLOCK_BYTES
    if not (0 <= row < data.shape[0] and 0 <= block < n_blocks):
        raise ValueError(
            f"{tensor.name} has {data.shape[0]} rows of {n_blocks} blocks, got "
            f"row={row}, block={block}"
        )
    start = block * Q4_1_BLOCK_BYTES
    return np.asarray(data[row, start : start + Q4_1_BLOCK_BYTES])


def bits_per_weight(kind: str) -> float:
    """Storage per weight, block overheads included, for a format name.

    "fp32", "bf16" and "fp16" store every weight on its own; GGUF names ("Q8_0",
    "Q4_0", "Q4_1", "Q4_K", ...) store blocks of weights with their scales, and the
    bits come from `gguf.GGML_QUANT_SIZES`.

    Raises:
        ValueError: an unknown format name.

    Introduced in chapter 9.
    """
    plain = {"fp32": 32.0, "bf16": 16.0, "fp16": 16.0}
    if kind in plain:
        return plain[kind]
    qtype = getattr(gguf.GGMLQuantizationType, kind, None)
    if qtype is None:
        raise ValueError(
            f"unknown format {kind!r}; use fp32, bf16, fp16 or a GGUF type like Q4_1"
        )
    block_size, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    return 8 * block_bytes / block_size


def memory_table(n_params: int, kinds: tuple[str, ...]) -> list[tuple[str, float, int]]:
    """What `n_params` weights cost in each format.

    Args:
        n_params: the number of weights.
        kinds: format names, see `bits_per_weight`.

    Returns:
        One `(kind, bits_per_weight, bytes)` per format.

    Introduced in chapter 9.
    """
    if n_params < 0:
        raise ValueError(f"n_params must be >= 0, got {n_params}")
    rows = []
    for kind in kinds:
        bits = bits_per_weight(kind)
        rows.append((kind, bits, int(np.ceil(n_params * bits / 8))))
    return rows


def file_storage(reader: gguf.GGUFReader) -> dict[str, tuple[int, int]]:
    """Weights and bytes per storage type in an open GGUF file.

    Args:
        reader: `gguf.GGUFReader(path)`.

    Returns:
        type name -> `(n_weights, n_bytes)`.

    Introduced in chapter 9.
    """
    totals: dict[str, tuple[int, int]] = {}
    for tensor in reader.tensors:
        n, b = totals.get(tensor.tensor_type.name, (0, 0))
        totals[tensor.tensor_type.name] = (
            n + int(tensor.n_elements),
            b + int(tensor.n_bytes),
        )
    return totals

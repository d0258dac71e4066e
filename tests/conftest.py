"""Shared fixtures and markers: tiny random models for fast tests, the two pretrained
models loaded once per session for slow ones, and the `network`/`gpu` skips."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")  # before anything imports matplotlib

import pytest  # noqa: E402

TINY_VOCAB = 97  # a prime, so that no size coincides with it by accident


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-network",
        action="store_true",
        default=False,
        help="also run tests marked `network` (they need the internet)",
    )


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Skip `network` tests unless --run-network (which also lets them use sockets),
    and `gpu` tests without CUDA."""
    run_network = config.getoption("--run-network")
    gpu_items = [item for item in items if "gpu" in item.keywords]
    has_cuda = False
    if gpu_items:
        import torch

        has_cuda = torch.cuda.is_available()
    for item in items:
        if "network" in item.keywords and not run_network:
            item.add_marker(pytest.mark.skip(reason="needs --run-network"))
        elif "network" in item.keywords:
            item.add_marker(pytest.mark.enable_socket)  # lift pytest-socket's block
    for item in gpu_items:
        if not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))


class CharTokenizer:
    """A stand-in tokenizer for the tiny random model: one printable character per
    token (id = code point - 32), so fast tests need no real tokenizer."""

    eos_token_id = TINY_VOCAB - 1

    def __call__(self, text: str, return_tensors: str = "pt") -> dict:
        import torch

        return {"input_ids": torch.tensor([[ord(c) - 32 for c in text]])}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i != self.eos_token_id]
        return "".join(chr(i + 32) for i in ids)


def _tiny_llama(attn_implementation: str):
    """A random 2-layer LLaMA (D=32, H=4, KV heads=2, V=97, context 64) in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        eos_token_id=CharTokenizer.eos_token_id,
        pad_token_id=CharTokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(
        config, attn_implementation=attn_implementation
    )
    return model.eval()


@pytest.fixture
def tiny_llama():
    """(model, tokenizer): a tiny random LLaMA (eager attention), CharTokenizer."""
    return _tiny_llama("eager"), CharTokenizer()


@pytest.fixture
def tiny_llama_sdpa():
    """The same tiny LLaMA with PyTorch's fused attention, which returns no weights."""
    return _tiny_llama("sdpa")


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of SmolLM2-135M-Instruct with eager attention, loaded once."""
    from utils.models import load_smollm2

    return load_smollm2(attn_weights=True)


@pytest.fixture(scope="session")
def minilm():
    """(model, tokenizer) of all-MiniLM-L6-v2 with eager attention, loaded once."""
    from utils.models import load_minilm

    return load_minilm(attn_weights=True)


class FakeHandle:
    """Stands in for the DisplayHandle that `display(..., display_id=True)` returns."""

    def __init__(self) -> None:
        self.updates = []

    def update(self, obj) -> None:
        self.updates.append(obj)


@pytest.fixture
def displayed(monkeypatch) -> list:
    """Record what `utils.widgets` passes to `display`; each call gets a FakeHandle."""
    import matplotlib.pyplot as plt

    import utils.widgets as uw

    calls = []

    def fake_display(obj, **kwargs):
        calls.append((obj, kwargs, FakeHandle()))
        return calls[-1][2]

    monkeypatch.setattr(uw, "display", fake_display)
    yield calls
    plt.close("all")


def failure_message(exercise_id: str, answer) -> str:
    """The message of the AssertionError that checking `answer` raises, unwrapped."""
    from utils.checks import check_exercise

    with pytest.raises(AssertionError) as info:
        check_exercise(exercise_id, answer)
    return " ".join(str(info.value).split())  # undo the line wrapping

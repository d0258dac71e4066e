"""Tests of `utils.reference.lora`: the LoRA layer against its formula, merge and
unmerge, injection by name, parameter counts, and equality with `peft`'s LoRA."""

import pytest
import torch
from conftest import TINY_VOCAB
from torch import nn

from utils.reference.lora import (
    LoRALinear,
    count_trainable,
    inject_lora,
    lora_layers,
    merge_lora,
    unmerge_lora,
)


def _layer(rank: int = 4, alpha: float = 8.0, bias: bool = True) -> LoRALinear:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(12, 7, bias=bias), rank=rank, alpha=alpha)
    with torch.no_grad():
        layer.lora_B.normal_()  # a trained-looking update, not the zero start
    return layer


def test_lora_starts_equal_to_base():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, rank=3, alpha=6)
    x = torch.randn(2, 4, 6)
    torch.testing.assert_close(layer(x), base(x), atol=0, rtol=0)


@pytest.mark.parametrize(("rank", "alpha"), [(4, 8.0), (8, 4.0), (2, 2.0)])
def test_lora_forward_matches_formula(rank, alpha):
    layer = _layer(rank, alpha)
    x = torch.randn(3, 12)
    want = x @ layer.base.weight.T + layer.base.bias
    want = want + (alpha / rank) * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)
    assert layer.scale == alpha / rank


@pytest.mark.parametrize(("rank", "alpha", "bias"), [(4, 16.0, True), (8, 3.0, False)])
def test_lora_merge_then_unmerge(rank, alpha, bias):
    layer = _layer(rank, alpha, bias)
    original = layer.base.weight.detach().clone()
    x = torch.randn(5, 12)
    with torch.no_grad():
        unmerged = layer(x)
        layer.merge()
        merged = layer(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, original, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x).detach(), unmerged, atol=1e-6, rtol=0)


def test_lora_double_merge_is_an_error():
    layer = _layer()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    layer.unmerge()
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()


def test_lora_only_adapter_trains():
    layer = _layer()
    trainable = [n for n, p in layer.named_parameters() if p.requires_grad]
    assert trainable == ["lora_A", "lora_B"]
    assert count_trainable(layer) == (4 * 12 + 7 * 4, 4 * 12 + 7 * 4 + 12 * 7 + 7)


def test_lora_dropout_only_in_training():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 8), rank=2, alpha=4, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 8)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"base": nn.Conv1d(2, 2, 1)}, TypeError, "wraps an nn.Linear"),
        ({"rank": 0}, ValueError, "rank must be"),
        ({"rank": 2.5}, ValueError, "rank must be"),
        ({"alpha": 0}, ValueError, "alpha must be"),
        ({"dropout": 1.0}, ValueError, "dropout must be"),
    ],
)
def test_lora_bad_arguments(kwargs, error, match):
    args = {"base": nn.Linear(3, 3), "rank": 2, "alpha": 4.0} | kwargs
    with pytest.raises(error, match=match):
        LoRALinear(**args)


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.randn(3, 5), ValueError, r"last dim must be in=6.*got shape \(3, 5\)"),
        (torch.randn(6, 3), ValueError, "feature dim last"),
        (torch.tensor(1.0), ValueError, "in=6"),
        ([[0.0] * 6], TypeError, "needs a torch.Tensor, got list"),
    ],
)
def test_lora_rejects_wrong_input(x, error, match):
    layer = LoRALinear(nn.Linear(6, 4), rank=2, alpha=4.0)
    with pytest.raises(error, match=match):
        layer(x)


def test_inject_lora_by_name_and_layer(tiny_llama):
    model, _ = tiny_llama
    names = inject_lora(model, ["q_proj", "v_proj"], rank=2, alpha=4, layers=[1])
    assert names == [
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    assert len(lora_layers(model)) == 2
    trainable, total = count_trainable(model)
    # q_proj: 32 -> 32, v_proj: 32 -> 16 (2 kv heads of 8)
    assert trainable == (2 * 32 + 32 * 2) + (2 * 32 + 16 * 2)
    assert total > trainable


def test_inject_lora_no_match_is_an_error(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(ValueError, match="no nn.Linear named"):
        inject_lora(model, ["query"], rank=2, alpha=4)


def test_merge_lora_whole_model(tiny_llama):
    model, _ = tiny_llama
    inject_lora(model, ["q_proj", "v_proj", "o_proj"], rank=4, alpha=12)
    torch.manual_seed(1)
    for layer in lora_layers(model):
        nn.init.normal_(layer.lora_B)
    ids = torch.randint(0, TINY_VOCAB, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
        merge_lora(model)
        merged = model(ids).logits
        unmerge_lora(model)
        after = model(ids).logits
    torch.testing.assert_close(merged, before, atol=1e-5, rtol=0)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")
def test_lora_equals_peft_with_same_weights(tiny_llama):
    import copy

    from peft import LoraConfig, get_peft_model

    from utils.finetune import (
        InstructionExample,
        answer_loss_sum,
        copy_lora_to_peft,
        pad_examples,
    )

    ours, _ = tiny_llama
    theirs = copy.deepcopy(ours)
    inject_lora(ours, ["q_proj", "v_proj"], rank=4, alpha=16, layers=[1])
    config = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        layers_to_transform=[1],
    )
    theirs = get_peft_model(theirs, config)
    torch.manual_seed(2)
    for layer in lora_layers(ours):
        nn.init.normal_(layer.lora_B)
    copy_lora_to_peft(ours, theirs)
    assert count_trainable(ours)[0] == count_trainable(theirs)[0]
    ids = torch.randint(0, TINY_VOCAB, (2, 7))
    batch = pad_examples([InstructionExample(ids[0].tolist(), 3)], TINY_VOCAB - 1)
    with torch.no_grad():
        loss_ours, _ = answer_loss_sum(ours, batch)
        loss_theirs, _ = answer_loss_sum(theirs, batch)
        torch.testing.assert_close(loss_ours, loss_theirs, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            ours(ids).logits, theirs(ids).logits, atol=1e-5, rtol=0
        )

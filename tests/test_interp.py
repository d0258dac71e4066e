"""Tests of `utils.interp` and `utils.reference.interp`: attention capture, head
ablation, the logit lens, repeated sequences, the induction score and chapter 6's
checkpoint, on tiny random models (the course's GPT and a tiny LLaMA)."""

import dataclasses

import numpy as np
import pytest
import torch

from utils.data import CharData, CharTokenizer
from utils.interp import (
    ablate_heads,
    attention_weights,
    copy_losses,
    gpt_attention_maps,
    head_ablation_losses,
    induction_scores,
    load_shakespeare_gpt,
    logit_lens,
    mean_loss,
    model_logits,
    model_parts,
    repeated_random_tokens,
    residual_stream,
    shakespeare_gpt_config,
    token_losses,
    token_rank,
    top_heads,
    weight_on_keys,
)
from utils.reference.gpt import GPT, GPTConfig
from utils.reference.interp import induction_score
from utils.training import TrainConfig, save_checkpoint


@pytest.fixture
def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=97, context_length=16, n_layers=2, n_heads=4, d_model=32,
        positions="rope", bias=False,
    )  # fmt: skip
    return GPT(config).eval()


@pytest.fixture(params=["gpt", "llama"])
def any_model(request, tiny_gpt, tiny_llama):
    return tiny_gpt if request.param == "gpt" else tiny_llama[0]


def _ids(seed: int = 1, shape=(2, 12)) -> torch.Tensor:
    return torch.randint(0, 97, shape, generator=torch.Generator().manual_seed(seed))


def test_ablate_heads_with_no_head_changes_nothing(any_model):
    idx = _ids()
    expected = model_logits(any_model, idx)
    with ablate_heads(any_model, []):
        actual = model_logits(any_model, idx)
    assert torch.equal(actual, expected)


def test_ablate_heads_equals_zeroing_the_projection_columns(any_model):
    idx, parts = _ids(), model_parts(any_model)
    heads = [(0, 1), (1, 3), (1, 0)]
    with ablate_heads(any_model, heads):
        actual = model_logits(any_model, idx)
    with torch.no_grad():  # by hand: the head's columns of the projection add nothing
        for layer, head in heads:
            cols = slice(head * parts.head_dim, (head + 1) * parts.head_dim)
            parts.out_projs[layer].weight[:, cols] = 0.0
    torch.testing.assert_close(actual, model_logits(any_model, idx))


def test_ablate_heads_removes_its_hooks_and_checks_indices(tiny_gpt):
    idx = _ids()
    expected = model_logits(tiny_gpt, idx)
    with ablate_heads(tiny_gpt, [(0, 0)]):
        assert not torch.equal(model_logits(tiny_gpt, idx), expected)
    assert torch.equal(model_logits(tiny_gpt, idx), expected)
    with pytest.raises(ValueError, match="2 layers of 4 heads"):
        with ablate_heads(tiny_gpt, [(2, 0)]):
            pass


def test_head_ablation_losses_match_ablate_heads(tiny_gpt):
    x, y = _ids(2), _ids(3)
    base, losses = head_ablation_losses(tiny_gpt, x, y)
    assert losses.shape == (2, 4)
    assert base == pytest.approx(mean_loss(tiny_gpt, x, y))
    with ablate_heads(tiny_gpt, [(1, 2)]):
        assert losses[1, 2].item() == pytest.approx(mean_loss(tiny_gpt, x, y), rel=1e-6)


def test_gpt_attention_maps_are_causal_rows_and_leave_the_model_fused(tiny_gpt):
    idx = _ids()
    maps = gpt_attention_maps(tiny_gpt, idx)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 12, 12)
    for m in maps:
        torch.testing.assert_close(m.sum(dim=-1), torch.ones(2, 4, 12))
        assert torch.all(m.triu(diagonal=1) == 0)
    assert not any(block.attn.store_weights for block in tiny_gpt.blocks)


def test_gpt_attention_maps_match_a_manual_softmax(tiny_gpt):
    idx = _ids(shape=(1, 10))
    block = tiny_gpt.blocks[0]
    h = block.norm1(tiny_gpt.drop(tiny_gpt.tok_emb(idx)))  # (1, T, D)
    q, k, _ = block.attn.project(h)  # (1, H, T, Dh)
    cos, sin = tiny_gpt.rope_cos[:10], tiny_gpt.rope_signed_sin[:10]
    from utils.reference.gpt import rotate

    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    scores = q @ k.transpose(-2, -1) / q.size(-1) ** 0.5  # (1, H, T, T)
    future = torch.ones(10, 10, dtype=torch.bool).triu(1)
    expected = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    torch.testing.assert_close(gpt_attention_maps(tiny_gpt, idx)[0], expected)


def test_attention_weights_of_a_llama_are_its_own(tiny_llama):
    model, idx = tiny_llama[0], _ids()
    expected = model(input_ids=idx, output_attentions=True).attentions
    for ours, theirs in zip(attention_weights(model, idx), expected, strict=True):
        torch.testing.assert_close(ours, theirs)


def test_residual_stream_has_one_entry_per_block_plus_one(any_model):
    streams = residual_stream(any_model, _ids())
    assert len(streams) == len(model_parts(any_model).blocks) + 1
    assert all(s.shape == streams[0].shape for s in streams)


@pytest.mark.parametrize("position", [-1, 4])
def test_logit_lens_at_the_last_layer_equals_the_logits(any_model, position):
    idx = _ids()
    lens = logit_lens(any_model, idx, position=position)  # (L + 1, B, V)
    assert lens.shape == (len(model_parts(any_model).blocks) + 1, 2, 97)
    torch.testing.assert_close(lens[-1], model_logits(any_model, idx)[:, position])


def test_logit_lens_at_layer_0_reads_the_embeddings(tiny_gpt):
    idx = _ids()
    embedded = tiny_gpt.tok_emb(idx)[:, -1]  # RoPE: no position vector to add
    expected = tiny_gpt.lm_head(tiny_gpt.norm_f(embedded))
    torch.testing.assert_close(logit_lens(tiny_gpt, idx)[0], expected)


@pytest.mark.slow
def test_logit_lens_of_smollm2_ends_at_its_logits(smollm2):
    model, tokenizer = smollm2
    idx = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    lens = logit_lens(model, idx)
    assert lens.shape == (31, 1, model.config.vocab_size)
    torch.testing.assert_close(
        lens[-1], model_logits(model, idx)[:, -1], atol=1e-4, rtol=1e-4
    )
    assert token_rank(lens[-1, 0], tokenizer.encode(" Paris")[0]).item() == 0


def test_token_rank_counts_larger_logits():
    logits = torch.tensor([[0.5, 2.0, -1.0, 1.0], [3.0, 2.0, 1.0, 0.0]])
    assert token_rank(logits, 3).tolist() == [1, 3]
    assert token_rank(logits, 1).tolist() == [0, 1]


def test_token_losses_match_cross_entropy(any_model):
    idx = _ids()
    logits = model_logits(any_model, idx)
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), idx[:, 1:], reduction="none"
    )
    torch.testing.assert_close(token_losses(any_model, idx), expected)


def test_repeated_random_tokens_repeat_after_the_prefix():
    idx = repeated_random_tokens(50, period=7, n_seqs=3, seed=4, prefix=[1], low=10)
    assert idx.shape == (3, 15) and idx.dtype == torch.long
    assert torch.all(idx[:, 0] == 1)
    assert torch.equal(idx[:, 1:8], idx[:, 8:])
    assert idx[:, 1:].min() >= 10 and idx.max() < 50
    assert torch.equal(
        idx, repeated_random_tokens(50, 7, 3, seed=4, prefix=[1], low=10)
    )
    with pytest.raises(ValueError, match="period"):
        repeated_random_tokens(50, period=0, n_seqs=3)


def _loop_induction_score(weights: torch.Tensor, period: int) -> torch.Tensor:
    seq_len = weights.size(-1)
    queries = range(seq_len - period, seq_len)
    picked = [weights[..., t, t - period + 1] for t in queries]
    return torch.stack(picked, dim=-1).mean(dim=-1)


@pytest.mark.parametrize(
    ("shape", "seq_len", "period"), [((3,), 10, 5), ((2, 4), 13, 6)]
)
def test_induction_score_matches_a_loop(shape, seq_len, period):
    scores = torch.randn(
        *shape, seq_len, seq_len, generator=torch.Generator().manual_seed(0)
    )
    weights = scores.softmax(dim=-1)
    expected = _loop_induction_score(weights, period)
    torch.testing.assert_close(induction_score(weights, period), expected)


def test_induction_score_of_a_perfect_head_is_one():
    period, seq_len = 5, 11  # a prefix of one token
    weights = torch.zeros(seq_len, seq_len)
    for t in range(seq_len):
        weights[t, max(t - period + 1, 0)] = 1.0
    assert induction_score(weights, period).item() == 1.0


@pytest.mark.parametrize(
    ("weights", "period", "match"),
    [
        (torch.ones(4), 2, "attention maps"),
        (torch.ones(4, 5), 2, "square"),
        (torch.ones(6, 6), 4, "2 \\* period"),
        (torch.ones(6, 6), 0, "period must be"),
    ],
)
def test_induction_score_rejects_bad_input(weights, period, match):
    with pytest.raises(ValueError, match=match):
        induction_score(weights, period)


def test_induction_scores_average_the_maps(tiny_gpt):
    idx = repeated_random_tokens(97, period=6, n_seqs=3, seed=0)
    maps = torch.stack(gpt_attention_maps(tiny_gpt, idx))  # (L, B, H, T, T)
    expected = induction_score(maps, 6).mean(dim=1)  # (L, H)
    torch.testing.assert_close(induction_scores(tiny_gpt, idx, 6), expected)


def test_weight_on_keys_sums_the_chosen_columns():
    maps = [torch.tensor([[[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]]])]
    mask = torch.tensor([[True, False, True]])
    expected = torch.tensor([[(1.0 + 0.5 + 0.7) / 3]])
    torch.testing.assert_close(weight_on_keys(maps, mask), expected)


def test_model_parts_rejects_other_models():
    with pytest.raises(TypeError, match="LLaMA-style"):
        model_parts(torch.nn.Linear(2, 2))


def _fake_data() -> CharData:
    tokenizer = CharTokenizer("abcdefghij")
    tokens = torch.randint(0, 10, (600,), generator=torch.Generator().manual_seed(0))
    return CharData(tokenizer, tokens[:500], tokens[500:])


@pytest.mark.slow  # trains for 3 steps
def test_load_shakespeare_gpt_trains_when_missing_then_loads(tmp_path):
    path, data = tmp_path / "ch06.pt", _fake_data()
    short = TrainConfig(max_steps=3, warmup_steps=1, eval_interval=3, eval_batches=1)
    model, trained = load_shakespeare_gpt(
        path, data=data, progress=False, train_config=short
    )
    assert trained and path.exists() and not model.training
    again, trained_again = load_shakespeare_gpt(path, data=data)
    assert not trained_again
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_load_shakespeare_gpt_refuses_another_config(tmp_path):
    path = tmp_path / "other.pt"
    config = dataclasses.replace(shakespeare_gpt_config(10), n_layers=1)
    save_checkpoint(path, GPT(config), step=0, config=config)
    with pytest.raises(ValueError, match="delete the file"):
        load_shakespeare_gpt(path, data=_fake_data())


def test_load_shakespeare_gpt_reads_a_config_saved_before_mlp_ratio(tmp_path):
    path = tmp_path / "old.pt"
    config = shakespeare_gpt_config(10)
    save_checkpoint(path, GPT(config), step=0, config=config)
    saved = torch.load(path, weights_only=True)
    del saved["config"]["mlp_ratio"]  # as chapter 6 saved it before the field existed
    torch.save(saved, path)
    model, trained = load_shakespeare_gpt(path, data=_fake_data())
    assert not trained and model.config.mlp_ratio == 4


# --- the two copies of a repeated block ---------------------------------------------


def test_copy_losses_by_hand():
    # prefix p, block r0 r1 r2 twice: p r0 r1 r2 r0 r1 r2; entry t predicts token t + 1
    # targets:  r0(prefix) r1 r2 | r0(unpredictable) | r1 r2
    losses = torch.tensor([[100.0, 1.0, 3.0, 200.0, 5.0, 7.0]])
    assert copy_losses(losses, period=3) == (2.0, 6.0)


@pytest.mark.parametrize(("prefix", "period"), [(0, 2), (0, 5), (3, 4)])
def test_copy_losses_average_the_targets_of_each_copy(prefix, period):
    idx = repeated_random_tokens(50, period, n_seqs=2, prefix=[1] * prefix)
    target_pos = torch.arange(1, idx.size(1)).float().expand(2, -1)  # (B, T - 1)
    first, second = copy_losses(target_pos, period)
    # the targets are tokens 1 .. P - 1 of each copy
    first_copy = torch.arange(prefix + 1, prefix + period).float()
    assert first == pytest.approx(first_copy.mean().item())
    assert second == pytest.approx((first_copy + period).mean().item())


@pytest.mark.parametrize(
    ("shape", "period", "match"),
    [((2, 5), 1, "period >= 2"), ((2, 4), 3, "at least 2 \\* period - 1"),
     ((5,), 2, "\\(B, N\\)")],
)  # fmt: skip
def test_copy_losses_rejects_bad_input(shape, period, match):
    with pytest.raises(ValueError, match=match):
        copy_losses(torch.zeros(shape), period)


# --- bad input gets a clear message ---------------------------------------------------


@pytest.mark.parametrize(
    ("heads", "match"),
    [((0, 3), "each entry of heads must be a \\(layer, head\\) pair"),
     ([3], "got 3"), ([(0, 1.0)], "head must be a whole number"),
     (3, "heads must be a list of pairs")],
)  # fmt: skip
def test_ablate_heads_rejects_heads_that_are_not_int_pairs(tiny_gpt, heads, match):
    with pytest.raises(TypeError, match=match):
        with ablate_heads(tiny_gpt, heads):
            pass


def test_ablate_heads_accepts_numpy_and_torch_ints(tiny_gpt):
    idx = _ids()
    with ablate_heads(tiny_gpt, [(1, 2)]):
        expected = model_logits(tiny_gpt, idx)
    with ablate_heads(tiny_gpt, [(np.int64(1), torch.tensor(2))]):
        assert torch.equal(model_logits(tiny_gpt, idx), expected)


@pytest.mark.parametrize(
    ("make_args", "error", "match"),
    [(lambda maps, mask: (maps, mask[0]), ValueError, "shape \\(B, T\\)"),
     (lambda maps, mask: (maps, mask[:, :-1]), ValueError, "shape \\(B, T\\)"),
     (lambda maps, mask: (maps, mask.long()), TypeError, "bool tensor"),
     (lambda maps, mask: (maps[0], mask), TypeError, "pass \\[maps\\]"),
     (lambda maps, mask: ([m[0] for m in maps], mask), ValueError, "\\(B, H, T, T\\)")],
)  # fmt: skip
def test_weight_on_keys_rejects_bad_maps_or_masks(tiny_gpt, make_args, error, match):
    idx = _ids()
    maps = gpt_attention_maps(tiny_gpt, idx)
    with pytest.raises(error, match=match):
        weight_on_keys(*make_args(maps, idx == 3))


@pytest.mark.parametrize("token_id", [4, -1, 2.0])
def test_token_rank_rejects_ids_outside_the_vocabulary(token_id):
    with pytest.raises(ValueError, match="token_id"):
        token_rank(torch.zeros(3, 4), token_id)


def test_token_rank_accepts_numpy_ints():
    logits = torch.tensor([[0.5, 2.0, -1.0, 1.0]])
    assert token_rank(logits, np.int64(3)).tolist() == [1]


@pytest.mark.parametrize("position", [12, -13, 1.5])
def test_logit_lens_rejects_positions_outside_the_sequence(tiny_gpt, position):
    with pytest.raises(ValueError, match="position"):
        logit_lens(tiny_gpt, _ids(), position=position)


@pytest.mark.parametrize(
    ("scores", "k", "match"),
    [(torch.rand(4, 4), -1, "k must be >= 0"), (torch.rand(4), 2, "2-D"),
     (torch.rand(2, 4, 4), 2, "2-D")],
)  # fmt: skip
def test_top_heads_rejects_bad_input(scores, k, match):
    with pytest.raises(ValueError, match=match):
        top_heads(scores, k=k)


def test_top_heads_finds_the_largest():
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.2]])
    assert top_heads(scores, k=2) == [(0, 1, pytest.approx(0.9)), (1, 0, 0.5)]
    assert top_heads(scores, k=0) == [] and len(top_heads(scores, k=9)) == 4


@pytest.mark.parametrize("shape", [(2, 1), (5,)])
def test_token_losses_need_two_tokens_in_a_batch(tiny_gpt, shape):
    with pytest.raises(ValueError, match="T >= 2"):
        token_losses(tiny_gpt, torch.zeros(shape, dtype=torch.long))


def test_mean_loss_rejects_targets_of_another_shape(tiny_gpt):
    with pytest.raises(ValueError, match="same shape"):
        mean_loss(tiny_gpt, _ids(), _ids()[:, :-1])


@pytest.mark.parametrize("period", [np.int64(2), torch.tensor(2), np.int32(2)])
def test_induction_score_accepts_numpy_and_torch_ints(period):
    weights = torch.rand(3, 8, 8)
    torch.testing.assert_close(
        induction_score(weights, period), induction_score(weights, 2)
    )


@pytest.mark.parametrize("period", [True, 2.0, torch.tensor(2.0), "2"])
def test_induction_score_rejects_other_periods(period):
    with pytest.raises(ValueError, match="whole number"):
        induction_score(torch.rand(3, 8, 8), period)

"""Tests of utils.training: the schedule, the optimizer's groups, batches, loss
evaluation, checkpoints (round trip, wrappers, tied weights, atomic writes) and the
training loop (loss goes down, a resumed run equals an uninterrupted one)."""

import dataclasses
import math
import os
import re
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils import training
from utils.data import CharTokenizer
from utils.plots import LiveLossPlot, plot_loss_curves
from utils.reference.gpt import GPT, GPTConfig
from utils.training import (
    TrainConfig,
    batch_seed,
    configure_optimizer,
    estimate_loss,
    evaluate_loss,
    get_batch,
    load_checkpoint,
    lr_at,
    save_checkpoint,
    text_sampler,
    train,
)

TINY_VOCAB = 97  # as in conftest: a prime, so no size coincides with it
SCHEDULE = {"max_lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10, "total_steps": 100}


@pytest.fixture(autouse=True)
def one_thread():
    """Run these tiny models on one thread: a second one only adds overhead, and on a
    busy 2-core machine the threads' hand-offs can slow small ops a hundredfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_gpt(dropout: float = 0.0, seed: int = 0) -> GPT:
    """D=32, H=4, L=2, V=97, T=8."""
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=TINY_VOCAB,
        context_length=8,
        n_layers=2,
        n_heads=4,
        d_model=32,
        dropout=dropout,
    )
    return GPT(config)


def pattern_tokens(n: int = 2000) -> torch.Tensor:
    """A learnable stream: a fixed random cycle of 23 tokens, repeated."""
    cycle = torch.randperm(TINY_VOCAB, generator=torch.Generator().manual_seed(1))
    return cycle[:23].repeat(n // 23 + 1)[:n]


def tiny_train_config(**changes) -> TrainConfig:
    settings = dict(
        max_steps=10,
        batch_size=4,
        context_length=8,
        max_lr=3e-3,
        min_lr=3e-4,
        warmup_steps=2,
        log_interval=2,
        eval_interval=5,
        eval_batches=2,
        sample_interval=0,
    )
    return TrainConfig(**(settings | changes))


# --- the learning-rate schedule ------------------------------------------------------


def test_lr_at_endpoints():
    assert 0 < lr_at(0, **SCHEDULE) == pytest.approx(1e-3 / 11)
    assert lr_at(10, **SCHEDULE) == pytest.approx(1e-3)
    assert lr_at(100, **SCHEDULE) == pytest.approx(1e-4)
    assert lr_at(10_000, **SCHEDULE) == pytest.approx(1e-4)
    midway = lr_at(55, **SCHEDULE)  # half-way through the decay: the mean of the two
    assert midway == pytest.approx((1e-3 + 1e-4) / 2)


def test_lr_at_rises_then_falls():
    lrs = [lr_at(step, **SCHEDULE) for step in range(101)]

    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert max(lrs) == pytest.approx(1e-3) and min(lrs[10:]) == pytest.approx(1e-4)


def test_lr_at_without_warmup_starts_at_max_lr():
    schedule = SCHEDULE | {"warmup_steps": 0}

    assert lr_at(0, **schedule) == pytest.approx(1e-3)
    assert lr_at(1, **schedule) < 1e-3


@pytest.mark.parametrize(
    ("step", "changes", "message"),
    [
        (0, {"warmup_steps": 101}, "exceeds total_steps"),
        (0, {"min_lr": 2e-3}, "min_lr <= max_lr"),
        (0, {"min_lr": -1e-4}, "min_lr <= max_lr"),
        (-1, {}, "step must be a whole number >= 0"),
        (1.5, {}, "step must be a whole number"),
        (0, {"warmup_steps": -1}, "warmup_steps must be"),
        (0, {"total_steps": 0, "warmup_steps": 0}, "total_steps must be"),
    ],
)
def test_lr_at_rejects_bad_arguments(step, changes, message):
    with pytest.raises(ValueError, match=message):
        lr_at(step, **(SCHEDULE | changes))


# --- the optimizer -------------------------------------------------------------------


def test_configure_optimizer_decays_matrices_only():
    model = tiny_gpt()
    optimizer = configure_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = optimizer.param_groups
    ids = [id(p) for group in optimizer.param_groups for p in group["params"]]

    assert (decay["name"], decay["weight_decay"]) == ("decay", 0.1)
    assert (no_decay["name"], no_decay["weight_decay"]) == ("no_decay", 0.0)
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    assert ids.count(id(model.tok_emb.weight)) == 1  # the tied head counted once
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    n_params = sum(
        p.numel() for group in optimizer.param_groups for p in group["params"]
    )
    assert n_params == model.num_parameters()


def test_configure_optimizer_uses_fused_kernel_when_available(capsys):
    optimizer = configure_optimizer(tiny_gpt(), lr=1e-3, weight_decay=0.1, verbose=True)
    printed = capsys.readouterr().out

    assert optimizer.defaults["fused"] is True  # PyTorch >= 2.4 has a CPU kernel
    assert re.search(r"decay: \d+ tensors, [\d,]+ numbers", printed)
    assert "no_decay" in printed


def test_configure_optimizer_falls_back_to_foreach(monkeypatch):
    real = torch.optim.AdamW

    def no_fused(params, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError("no fused kernel here")
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    with pytest.warns(UserWarning, match="using foreach"):
        optimizer = configure_optimizer(tiny_gpt(), lr=1e-3, weight_decay=0.1)
    assert optimizer.defaults["foreach"] is True


def test_configure_optimizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="weight_decay >= 0"):
        configure_optimizer(tiny_gpt(), lr=1e-3, weight_decay=-0.1)
    with pytest.raises(ValueError, match="betas in"):
        configure_optimizer(tiny_gpt(), lr=1e-3, weight_decay=0.1, betas=(0.9, 1.0))


# --- batches -------------------------------------------------------------------------


def test_get_batch_shapes_and_shift():
    tokens = torch.arange(1000)  # each id is its own position: windows are easy to see
    x, y = get_batch(tokens, 6, 16, torch.Generator().manual_seed(0))

    assert x.shape == y.shape == (6, 16)
    torch.testing.assert_close(y, x + 1)  # the targets are the next tokens
    torch.testing.assert_close(x, x[:, :1] + torch.arange(16))  # consecutive windows
    assert x.min() >= 0 and y.max() <= 999


def test_get_batch_is_repeatable_and_seed_dependent():
    tokens = torch.randint(
        TINY_VOCAB, (500,), generator=torch.Generator().manual_seed(0)
    )

    def draw(seed: int) -> torch.Tensor:
        return get_batch(tokens, 4, 8, torch.Generator().manual_seed(seed))[0]

    torch.testing.assert_close(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


def test_get_batch_reaches_the_last_token():
    tokens = torch.arange(10)
    x, y = get_batch(tokens, 200, 9, torch.Generator().manual_seed(0))  # one window

    torch.testing.assert_close(x[0], torch.arange(9))
    torch.testing.assert_close(y[0], torch.arange(1, 10))


@pytest.mark.parametrize(
    ("tokens", "batch_size", "context_length", "message"),
    [
        (torch.zeros(2, 50, dtype=torch.long), 2, 4, "1-D stream"),
        (torch.zeros(50), 2, 4, "token ids"),
        (torch.zeros(8, dtype=torch.long), 2, 8, "at least 9 ids"),
        (torch.zeros(50, dtype=torch.long), 0, 4, "batch_size"),
        (torch.zeros(50, dtype=torch.long), 2, 0, "context_length"),
    ],
)
def test_get_batch_rejects_bad_input(tokens, batch_size, context_length, message):
    with pytest.raises(ValueError, match=message):
        get_batch(tokens, batch_size, context_length)


def test_batch_seed_differs_by_step_and_rank():
    seeds = {batch_seed(0, step, rank) for step in range(100) for rank in range(4)}

    assert len(seeds) == 400
    assert batch_seed(3, 7, 1) == batch_seed(3, 7, 1)
    assert all(0 <= s < 2**32 for s in seeds)


# --- evaluation ----------------------------------------------------------------------


class Bigram(nn.Module):
    """logits = table[idx]: a model whose loss is easy to compute by hand."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab_size, vocab_size))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx]  # (B, T) -> (B, T, V)


def test_evaluate_loss_predicts_every_token_once():
    torch.manual_seed(0)
    model, tokens = Bigram(5), torch.tensor([0, 1, 2, 3, 4, 0, 2, 4])
    by_hand = [
        -torch.log_softmax(model.table[a], dim=-1)[b]
        for a, b in zip(tokens[:-1], tokens[1:], strict=True)
    ]  # 7 predictions: windows of 3, 3 and 1 with T=3
    expected = torch.stack(by_hand).mean().item()

    for batch_size in (1, 2, 5):
        loss = evaluate_loss(model, tokens, context_length=3, batch_size=batch_size)
        assert loss == pytest.approx(expected, rel=1e-6)


def test_evaluate_loss_matches_windows_run_one_by_one():
    model = tiny_gpt().eval()
    tokens = pattern_tokens(20)
    total = 0.0
    for start in range(0, 19, 6):  # windows of 6, 6, 6 and 1 inputs
        end = min(start + 6, 19)
        x, y = tokens[start:end], tokens[start + 1 : end + 1]
        logits, _ = model(x[None])
        total += F.cross_entropy(logits[0], y, reduction="sum").item()

    loss = evaluate_loss(model, tokens, context_length=6, batch_size=2)
    assert loss == pytest.approx(total / 19, rel=1e-5)


def test_evaluation_restores_each_modules_mode():
    model = tiny_gpt(dropout=0.5).train()
    model.blocks[0].eval()  # a mixed state must come back as it was
    tokens = pattern_tokens(200)
    generator = torch.Generator().manual_seed(0)

    evaluate_loss(model, tokens, context_length=8)
    estimate_loss(
        model, tokens, batch_size=2, context_length=8, n_batches=2, generator=generator
    )
    assert model.training and model.blocks[1].training
    assert not any(m.training for m in model.blocks[0].modules())


def test_evaluation_switches_dropout_off():
    model = tiny_gpt(dropout=0.5).train()
    tokens = pattern_tokens(200)

    def estimate() -> float:
        generator = torch.Generator().manual_seed(0)
        return estimate_loss(
            model,
            tokens,
            batch_size=4,
            context_length=8,
            n_batches=2,
            generator=generator,
        )

    assert estimate() == estimate()
    assert evaluate_loss(model, tokens, 8) == evaluate_loss(model, tokens, 8)
    x, y = get_batch(tokens, 4, 8, torch.Generator().manual_seed(0))
    assert model(x, y)[1].item() != model(x, y)[1].item()  # train mode: dropout on


def test_estimate_loss_is_the_mean_over_its_batches():
    model = tiny_gpt().eval()
    tokens = pattern_tokens(300)
    generator = torch.Generator().manual_seed(5)
    batches = [get_batch(tokens, 3, 8, generator) for _ in range(2)]
    expected = sum(model(x, y)[1].item() for x, y in batches) / 2

    generator.manual_seed(5)
    loss = estimate_loss(
        model, tokens, batch_size=3, context_length=8, n_batches=2, generator=generator
    )
    assert loss == pytest.approx(expected, rel=1e-5)


# --- checkpoints ---------------------------------------------------------------------


def trained_pair(steps: int = 3) -> tuple[GPT, torch.optim.Optimizer]:
    """A tiny GPT and its optimizer after a few steps, so Adam has state."""
    model = tiny_gpt()
    optimizer = configure_optimizer(model, lr=1e-2, weight_decay=0.1)
    tokens = pattern_tokens(200)
    for step in range(steps):
        x, y = get_batch(tokens, 4, 8, torch.Generator().manual_seed(step))
        model(x, y)[1].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_checkpoint_round_trip(tmp_path):
    model, optimizer = trained_pair()
    path = save_checkpoint(
        tmp_path / "sub" / "gpt.pt",
        model,
        optimizer,
        step=3,
        config=model.config,
        extra={"chars": "abc", "history": {"loss": [4.1, 3.9]}},
    )
    fresh = tiny_gpt(seed=1)
    fresh_optimizer = configure_optimizer(fresh, lr=1e-2, weight_decay=0.1)
    meta = load_checkpoint(path, fresh, fresh_optimizer)

    assert meta == {
        "step": 3,
        "config": dataclasses.asdict(model.config),
        "extra": {"chars": "abc", "history": {"loss": [4.1, 3.9]}},
    }
    assert_same_state(fresh.state_dict(), model.state_dict())
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for index, state in saved["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(loaded["state"][index][key], value)


def test_checkpoint_holds_only_plain_values(tmp_path):
    model, optimizer = trained_pair(1)
    path = save_checkpoint(tmp_path / "gpt.pt", model, optimizer, step=1)

    payload = torch.load(path, weights_only=True, map_location="cpu")
    assert payload["format"] == training.CHECKPOINT_FORMAT
    with pytest.raises(ValueError, match=r"extra\['tokenizer'\] holds a CharTokenizer"):
        save_checkpoint(path, model, step=1, extra={"tokenizer": CharTokenizer("ab")})
    assert torch.load(path, weights_only=True)["step"] == 1  # the old file survives


def test_checkpoint_keeps_tied_weights_tied(tmp_path):
    model, _ = trained_pair()
    path = save_checkpoint(tmp_path / "gpt.pt", model, step=3)
    fresh = tiny_gpt(seed=1)
    load_checkpoint(path, fresh)

    assert fresh.lm_head.weight is fresh.tok_emb.weight
    torch.testing.assert_close(fresh.lm_head.weight, model.tok_emb.weight)
    with torch.no_grad():
        fresh.tok_emb.weight.zero_()
    assert fresh.lm_head.weight.abs().sum() == 0  # still one tensor after loading


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method`:DeprecationWarning")
def test_checkpoint_unwraps_compiled_models(tmp_path):
    model, _ = trained_pair()
    compiled = torch.compile(model)  # compiles lazily: nothing runs until a forward
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")

    path = save_checkpoint(tmp_path / "gpt.pt", compiled, step=3)
    keys = torch.load(path, weights_only=True)["model"].keys()
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in keys)
    fresh = torch.compile(tiny_gpt(seed=1))
    load_checkpoint(path, fresh)
    assert_same_state(fresh._orig_mod.state_dict(), model.state_dict())


def test_checkpoint_unwraps_ddp_models(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model, _ = trained_pair()
        path = save_checkpoint(
            tmp_path / "gpt.pt", DistributedDataParallel(model), step=3
        )
        fresh = DistributedDataParallel(tiny_gpt(seed=1))
        load_checkpoint(path, fresh)
    finally:
        dist.destroy_process_group()
    keys = torch.load(path, weights_only=True)["model"].keys()
    assert not any(k.startswith("module.") for k in keys)
    assert_same_state(fresh.module.state_dict(), model.state_dict())


def test_load_checkpoint_drops_wrapper_prefixes(tmp_path):
    model, _ = trained_pair()
    path = save_checkpoint(tmp_path / "gpt.pt", model, step=3)
    payload = torch.load(path, weights_only=True)
    payload["model"] = {f"module._orig_mod.{k}": v for k, v in payload["model"].items()}
    torch.save(payload, path)  # as if written by a tool that kept the prefixes
    fresh = tiny_gpt(seed=1)
    load_checkpoint(path, fresh)

    assert_same_state(fresh.state_dict(), model.state_dict())


def test_load_checkpoint_rejects_other_files(tmp_path):
    model, optimizer = trained_pair(1)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    save_checkpoint(tmp_path / "no_optimizer.pt", model, step=1)

    with pytest.raises(ValueError, match="not a checkpoint written by save_checkpoint"):
        load_checkpoint(tmp_path / "bare.pt", model)
    with pytest.raises(ValueError, match="holds no optimizer state"):
        load_checkpoint(tmp_path / "no_optimizer.pt", model, optimizer)


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    model, optimizer = trained_pair()
    path = save_checkpoint(tmp_path / "gpt.pt", model, optimizer, step=3)
    real_save = torch.save

    def crash_half_way(obj, file, *args, **kwargs):
        real_save(obj, file, *args, **kwargs)
        file.truncate(file.tell() // 2)  # half a file on disk, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny_gpt(seed=1), step=99)
    monkeypatch.undo()

    assert os.listdir(tmp_path) == ["gpt.pt"]  # no temporary file left behind
    fresh = tiny_gpt(seed=2)
    assert load_checkpoint(path, fresh)["step"] == 3
    assert_same_state(fresh.state_dict(), model.state_dict())


# --- the training loop ---------------------------------------------------------------


def test_train_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="warmup_steps=20 exceeds total_steps=10"):
        tiny_train_config(warmup_steps=20)
    with pytest.raises(ValueError, match="eval_interval must be a whole number >= 1"):
        tiny_train_config(eval_interval=0)
    with pytest.raises(ValueError, match="grad_clip"):
        tiny_train_config(grad_clip=-1.0)
    with pytest.raises(ValueError, match="precision must be one of"):
        tiny_train_config(precision="fp16")


def test_bf16_without_native_support_is_refused(monkeypatch):
    monkeypatch.setattr(training, "bf16_is_fast", lambda device: False)
    config = tiny_train_config(precision="bf16")
    with pytest.raises(ValueError, match="native bfloat16 .* use precision='fp32'"):
        train(tiny_gpt(), pattern_tokens(), pattern_tokens(), config, progress=False)


@pytest.mark.skipif(not training.bf16_is_fast("cpu"), reason="no native bf16 here")
def test_train_in_bf16_tracks_fp32():
    tokens = pattern_tokens()
    config = tiny_train_config(max_steps=20, eval_interval=10)
    fp32, bf16 = tiny_gpt(), tiny_gpt()
    expected = train(fp32, tokens, tokens, config, progress=False, plot=False)
    config = dataclasses.replace(config, precision="bf16")
    history = train(bf16, tokens, tokens, config, progress=False, plot=False)

    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    assert history["val_loss"] == pytest.approx(expected["val_loss"], abs=0.05)


def test_train_reduces_the_loss():
    model = tiny_gpt()
    tokens = pattern_tokens()
    config = tiny_train_config(max_steps=60, eval_interval=20, log_interval=10)
    history = train(model, tokens, tokens, config, progress=False, plot=False)

    assert history["eval_step"] == [0, 20, 40, 60]
    assert history["step"] == [10, 20, 30, 40, 50, 60]
    assert history["val_loss"][0] == pytest.approx(math.log(TINY_VOCAB), abs=0.3)
    assert history["val_loss"][-1] < 0.5 * history["val_loss"][0]
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["lr"][-1] == pytest.approx(config.min_lr, rel=0.1)


def test_train_prints_one_line_per_event(capsys):
    tokenizer = CharTokenizer("".join(chr(33 + i) for i in range(TINY_VOCAB)))
    sampler = text_sampler(tokenizer.encode, tokenizer.decode, "ab", max_new_tokens=5)
    config = tiny_train_config(sample_interval=10)
    history = train(
        tiny_gpt(), pattern_tokens(), pattern_tokens(), config, on_sample=sampler
    )
    out = capsys.readouterr().out  # the bar goes to stderr, the lines to stdout

    assert re.search(r"step  0/10 \| train \d\.\d{4} \| val \d\.\d{4} \| lr \d", out)
    assert re.search(r"step 10/10 \| .* \| lr 3\.0e-04 \| \d+ ms/step", out)
    assert "--- sample after 10 steps ---" in out
    assert [step for step, _ in history["samples"]] == [0, 10]
    assert all(len(text) == 7 and text[:2] == "ab" for _, text in history["samples"])


def test_train_rejects_bad_input(tmp_path):
    model, tokens = tiny_gpt(), pattern_tokens()

    with pytest.raises(ValueError, match="exceeds the model's context_length=8"):
        train(model, tokens, tokens, tiny_train_config(context_length=16))
    with pytest.raises(ValueError, match="start_step=11 is past max_steps=10"):
        train(model, tokens, tokens, tiny_train_config(), start_step=11)
    with pytest.raises(ValueError, match="needs config.checkpoint_path"):
        train(model, tokens, tokens, tiny_train_config(), resume=True)
    with pytest.raises(ValueError, match="val_tokens must be a 1-D stream"):
        train(model, tokens, tokens[:5], tiny_train_config())


class Crash(Exception):
    pass


def crash_at(step: int):
    """An on_sample callback that stops training at `step`, like a killed kernel."""

    def on_sample(model: nn.Module, done: int) -> None:
        if done == step:
            raise Crash

    return on_sample


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    tokens = pattern_tokens()
    config = tiny_train_config(sample_interval=2, checkpoint_interval=4)
    whole = tiny_gpt(dropout=0.1)  # dropout: the RNG state must be resumed too
    whole_history = train(
        whole,
        tokens,
        tokens,
        dataclasses.replace(config, checkpoint_path=str(tmp_path / "whole.pt")),
        progress=False,
        on_sample=crash_at(-1),
    )

    config = dataclasses.replace(config, checkpoint_path=str(tmp_path / "part.pt"))
    with pytest.raises(Crash):  # saved after 4 steps, stopped after 6
        train(tiny_gpt(dropout=0.1), tokens, tokens, config, on_sample=crash_at(6))
    assert load_checkpoint(config.checkpoint_path, tiny_gpt())["step"] == 4
    torch.manual_seed(123)  # whatever the RNG did since is undone by the resume
    resumed = tiny_gpt(dropout=0.1, seed=7)
    history = train(resumed, tokens, tokens, config, resume=True, progress=False)

    assert_same_state(resumed.state_dict(), whole.state_dict())
    for key in ("step", "train_loss", "lr", "eval_step", "val_loss"):
        assert history[key] == whole_history[key], key


def test_resume_of_a_finished_run_returns_its_history(tmp_path):
    tokens = pattern_tokens()
    config = tiny_train_config(checkpoint_path=str(tmp_path / "gpt.pt"))
    model = tiny_gpt()
    history = train(model, tokens, tokens, config, progress=False)

    fresh = tiny_gpt(seed=3)
    again = train(fresh, tokens, tokens, config, resume=True, progress=False)
    assert again == history
    assert_same_state(fresh.state_dict(), model.state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        longer = dataclasses.replace(config, max_steps=12, eval_interval=6)
        train(fresh, tokens, tokens, longer, resume=True, progress=False)
    assert any("another TrainConfig" in str(w.message) for w in caught)


def test_train_with_start_step_continues_the_schedule():
    tokens = pattern_tokens()
    config = tiny_train_config(log_interval=1)
    history = train(tiny_gpt(), tokens, tokens, config, start_step=7, progress=False)

    assert history["step"] == [8, 9, 10]
    assert history["lr"] == [pytest.approx(config.lr(s)) for s in (7, 8, 9)]
    assert history["eval_step"] == [10]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile needs g++")
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method`:DeprecationWarning")
def test_train_compiled_matches_eager():
    tokens = pattern_tokens()
    config = tiny_train_config(max_steps=6, eval_interval=3)
    eager, compiled = tiny_gpt(), tiny_gpt()
    eager_history = train(eager, tokens, tokens, config, progress=False)
    config = dataclasses.replace(config, compile=True)
    history = train(compiled, tokens, tokens, config, progress=False)

    assert history["val_loss"] == pytest.approx(eager_history["val_loss"], abs=1e-4)
    for key, value in eager.state_dict().items():  # keys without "_orig_mod."
        torch.testing.assert_close(compiled.state_dict()[key], value, atol=1e-4, rtol=0)


# --- the live loss plot --------------------------------------------------------------


HISTORY = {
    "step": [10, 20],
    "train_loss": [3.0, 2.5],
    "eval_step": [0, 20],
    "eval_train_loss": [4.2, 2.4],
    "val_loss": [4.2, 2.6],
}


def test_plot_loss_curves_draws_three_lines():
    fig = plot_loss_curves(HISTORY)
    ax = fig.axes[0]

    assert len(ax.lines) == 3
    assert ax.get_xlabel() == "optimizer step" and ax.get_title()
    assert len(plot_loss_curves({}).axes[0].lines) == 0  # nothing yet: empty axes


def test_live_loss_plot_updates_in_place(monkeypatch):
    import IPython
    import IPython.display

    class Handle:
        updates = 0

        def update(self, fig) -> None:
            Handle.updates += 1

    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: type("K", (), {"kernel": 1}))
    monkeypatch.setattr(
        IPython.display, "display", lambda fig, **kw: shown.append(fig) or Handle()
    )
    live = LiveLossPlot()
    live.update(HISTORY)
    live.update(HISTORY)

    assert len(shown) == 1 and Handle.updates == 1
    assert live.figure is not shown[0]  # a new figure replaced the first one


def test_live_loss_plot_without_a_kernel_only_draws():
    live = LiveLossPlot()
    live.update(HISTORY)

    assert len(live.figure.axes[0].lines) == 3

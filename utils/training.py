"""The course's training loop and what it needs: batches, a learning-rate schedule,
the optimizer, loss evaluation and checkpoints.

One training step is the five lines every PyTorch trainer shares:

    x, y = get_batch(...)                  # (B, T) inputs and (B, T) next tokens
    _, loss = model(x, y)                  # mean cross-entropy, a scalar
    loss.backward()                        # gradients of every parameter
    clip_grad_norm_(...); optimizer.step() # an AdamW update at this step's lr
    optimizer.zero_grad(set_to_none=True)

`train` wraps them with a schedule, periodic evaluation, samples, a live loss curve
and checkpoints. It reads the loss back from the tensor (a host sync) only every
`log_interval` steps, and it runs unchanged under `torchrun` with
DistributedDataParallel (see `utils.train_ddp`).
"""

import contextlib
import dataclasses
import hashlib
import math
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

CHECKPOINT_FORMAT = "llm-course-checkpoint"  # marks files written by save_checkpoint
CHECKPOINT_VERSION = 1
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DDP / DataParallel
_PLAIN = (bool, int, float, str, type(None), torch.Tensor)  # what weights_only loads


# --- batches -------------------------------------------------------------------------


def get_batch(
    tokens: torch.Tensor,
    batch_size: int,
    context_length: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random windows of the token stream and their next tokens.

    Row b is the window `tokens[o : o + T + 1]` at a random offset o, cut into the
    inputs `x[b] = tokens[o : o + T]` and the targets
    `y[b] = tokens[o + 1 : o + T + 1]`. All rows come from one indexing of a strided
    view of `tokens`, with no copy of the stream and no Python loop over rows.

    Args:
        tokens: the token stream, (N,) integer ids, with N > T.
        batch_size: B, the number of windows.
        context_length: T, the length of each window.
        generator: a seeded CPU `torch.Generator` for repeatable batches; None uses
            the global one.

    Returns:
        `(x, y)`, each (B, T) on the device of `tokens`; y is x shifted left by one.

    Raises:
        ValueError: tokens is not a 1-D integer tensor longer than T, or B or T < 1.

    Introduced in chapter 6.
    """
    _check_whole(batch_size, "batch_size", minimum=1)
    _check_whole(context_length, "context_length", minimum=1)
    _check_tokens(tokens, context_length + 1, "tokens")
    offsets = torch.randint(
        tokens.numel() - context_length, (batch_size,), generator=generator
    )  # (B,), each a valid start of a T + 1 window
    windows = tokens.unfold(0, context_length + 1, 1)  # (N - T, T + 1), a view
    rows = windows[offsets.to(tokens.device)]  # (B, T + 1)
    return rows[:, :-1], rows[:, 1:]  # (B, T), (B, T)


def batch_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of one step's batch on one process: a hash of (seed, rank, step).

    Seeding each step's generator from its own number makes the batches of a run a
    fixed function of the step, so a run resumed from a checkpoint draws exactly the
    batches the uninterrupted run would have drawn, and DDP ranks draw different ones.

    Args:
        seed: the run's seed.
        step: the optimizer step, from 0.
        rank: the process's rank under DistributedDataParallel (0 otherwise).

    Returns:
        An integer in [0, 2**32), the range PyTorch's CPU generator uses.

    Introduced in chapter 6.
    """
    digest = hashlib.blake2b(f"{seed}/{rank}/{step}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


# --- the learning-rate schedule ------------------------------------------------------


def lr_at(
    step: int, *, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int
) -> float:
    """The learning rate of optimizer step `step`: linear warm-up, then cosine decay.

    - warm-up, `step <= warmup_steps`: `max_lr * (step + 1) / (warmup_steps + 1)`,
      so step 0 already moves the weights a little and the last warm-up step,
      `step == warmup_steps`, reaches `max_lr`;
    - decay, `warmup_steps < step < total_steps`: half a cosine from `max_lr` down
      to `min_lr`;
    - from `total_steps` on: `min_lr`. This wins when `warmup_steps == total_steps`.

    Args:
        step: the optimizer step, counted from 0.
        max_lr: the peak learning rate.
        min_lr: the final learning rate, 0 <= min_lr <= max_lr.
        warmup_steps: steps of linear warm-up, at most `total_steps`; 0 starts at
            `max_lr`.
        total_steps: the step at which the decay reaches `min_lr` (usually the
            length of the run).

    Returns:
        The learning rate, a float.

    Raises:
        ValueError: a negative step or rate, min_lr > max_lr, or warmup_steps >
            total_steps.

    Introduced in chapter 6.
    """
    _check_schedule(step, max_lr, min_lr, warmup_steps, total_steps)
    if step >= total_steps:
        return min_lr
    if step <= warmup_steps:
        return max_lr * (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # in (0, 1)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def _check_schedule(
    step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int
) -> None:
    """Raise ValueError unless the schedule's arguments make sense."""
    _check_whole(step, "step", minimum=0)
    _check_whole(warmup_steps, "warmup_steps", minimum=0)
    _check_whole(total_steps, "total_steps", minimum=1)
    if warmup_steps > total_steps:
        raise ValueError(
            f"warmup_steps={warmup_steps} exceeds total_steps={total_steps} "
            "(TrainConfig's max_steps); the warm-up must end before the run does"
        )
    if not 0 <= min_lr <= max_lr:
        raise ValueError(
            f"need 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}; "
            "nanoGPT's Shakespeare run uses max_lr=1e-3, min_lr=1e-4"
        )


# --- the optimizer -------------------------------------------------------------------


def configure_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.99),
    verbose: bool = False,
) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only.

    Weight decay pulls weights towards 0. It suits the matrices (linear weights and
    embeddings, dim >= 2); biases and LayerNorm scales (dim < 2) are left alone. A
    tied weight is one Parameter, so it is counted and decayed once.

    Args:
        model: the model (a compiled or DDP-wrapped model is unwrapped).
        lr: the initial learning rate (`train` sets it anew at every step).
        weight_decay: the decoupled decay of the matrices, e.g. 0.1.
        betas: Adam's moving-average rates of the gradient and its square.
        verbose: print how many tensors and numbers each group holds.

    Returns:
        A `torch.optim.AdamW` with two groups, named "decay" and "no_decay" in
        their "name" entries. It uses the fused kernel where PyTorch has one for
        the parameters' device, and the multi-tensor (foreach) one otherwise.

    Raises:
        ValueError: a negative lr or weight_decay, or betas outside [0, 1).

    Introduced in chapter 6.
    """
    if lr < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
        raise ValueError(
            f"need lr >= 0, weight_decay >= 0 and betas in [0, 1), got lr={lr}, "
            f"weight_decay={weight_decay}, betas={tuple(betas)}"
        )
    params = [p for p in _unwrap(model).parameters() if p.requires_grad]  # tied: once
    groups = [
        {"name": "decay", "params": [p for p in params if p.dim() >= 2]},
        {"name": "no_decay", "params": [p for p in params if p.dim() < 2]},
    ]
    groups[0]["weight_decay"], groups[1]["weight_decay"] = weight_decay, 0.0
    if verbose:
        for group in groups:
            n = sum(p.numel() for p in group["params"])
            print(f"{group['name']:>8}: {len(group['params'])} tensors, {n:,} numbers")
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=True)
    except (RuntimeError, ValueError) as err:  # no fused kernel for this device
        warnings.warn(f"fused AdamW unavailable ({err}); using foreach", stacklevel=2)
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), foreach=True)


# --- evaluation ----------------------------------------------------------------------


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    batch_size: int,
    context_length: int,
    n_batches: int,
    generator: torch.Generator | None = None,
) -> float:
    """The mean loss over `n_batches` random batches: a quick, noisy estimate.

    Runs in eval mode (no dropout) without gradients; every submodule gets back its
    train/eval mode afterwards.

    Args:
        model: maps (B, T) ids to logits (B, T, V), or to a tuple starting with them.
        tokens: the token stream, (N,) integer ids, with N > T.
        batch_size: B, windows per batch.
        context_length: T, the window length.
        n_batches: how many batches to average, at least 1.
        generator: a seeded CPU generator; the same seed gives the same batches.

    Returns:
        The mean cross-entropy in nats per token.

    Raises:
        ValueError: bad tokens or sizes (see `get_batch`), or n_batches < 1.

    Introduced in chapter 6.
    """
    _check_whole(n_batches, "n_batches", minimum=1)
    total = torch.zeros((), dtype=torch.float64, device=tokens.device)
    with _eval_mode(model):
        for _ in range(n_batches):
            x, y = get_batch(tokens, batch_size, context_length, generator)
            total += _cross_entropy_sum(model, x, y)
    return total.item() / (n_batches * batch_size * context_length)


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, tokens: torch.Tensor, context_length: int, batch_size: int = 64
) -> float:
    """The mean loss over a whole token stream: every token after the first is
    predicted exactly once.

    The stream is cut into consecutive, non-overlapping windows of T inputs (the
    last one shorter if T does not divide N - 1). Each window starts without
    context, as the first positions of a training window do.

    Args:
        model: maps (B, T) ids to logits (B, T, V), or to a tuple starting with them.
        tokens: the token stream, (N,) integer ids, N >= 2.
        context_length: T, the window length, at most the model's context.
        batch_size: windows per forward pass (affects speed, not the result).

    Returns:
        The mean cross-entropy over the N - 1 predictions, in nats per token.

    Raises:
        ValueError: tokens is not a 1-D integer tensor of at least 2 ids, or T or
            batch_size < 1.

    Introduced in chapter 6.
    """
    _check_tokens(tokens, 2, "tokens")
    _check_whole(context_length, "context_length", minimum=1)
    _check_whole(batch_size, "batch_size", minimum=1)
    inputs, targets = tokens[:-1], tokens[1:]  # (N - 1,) each
    n = inputs.numel()
    n_full = n // context_length * context_length
    full_x = inputs[:n_full].view(-1, context_length)  # (N_windows, T)
    full_y = targets[:n_full].view(-1, context_length)  # (N_windows, T)
    total = torch.zeros((), dtype=torch.float64, device=tokens.device)
    with _eval_mode(model):
        for i in range(0, full_x.size(0), batch_size):
            total += _cross_entropy_sum(
                model, full_x[i : i + batch_size], full_y[i : i + batch_size]
            )
        if n_full < n:  # the last, shorter window
            total += _cross_entropy_sum(
                model, inputs[n_full:][None], targets[n_full:][None]
            )
    return total.item() / n


def _cross_entropy_sum(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Summed cross-entropy of the model's predictions for x against y, float64."""
    out = model(x)
    logits = out[0] if isinstance(out, tuple) else out  # (B, T, V)
    loss = F.cross_entropy(
        logits.flatten(0, 1).float(),  # (B, T, V) -> (B * T, V)
        y.flatten().long(),  # (B, T) -> (B * T,)
        reduction="sum",
    )
    return loss.double()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; each submodule's own mode is restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


# --- checkpoints ---------------------------------------------------------------------


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    step: int,
    config: Any = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save the model (and optimizer) state atomically: a crash never leaves a
    half-written file at `path`.

    The file holds only tensors and plain values, so `load_checkpoint` can read it
    with `weights_only=True`, which never runs code from the file. The model's keys
    never carry the `_orig_mod.` (torch.compile) or `module.` (DDP) prefixes. The
    data goes to a temporary file in the same folder, is flushed to disk, then
    renamed over `path` in one step (`os.replace`).

    Args:
        path: where to write, e.g. "data/checkpoints/gpt.pt"; folders are created.
        model: the model; compiled and DDP-wrapped models are unwrapped.
        optimizer: its state too (Adam's moments), to resume training exactly.
        step: how many optimizer steps the model has taken.
        config: the model's config: a dataclass (stored with `dataclasses.asdict`),
            a dict of plain values, or None.
        extra: more plain values to store (history, tokenizer characters, ...).

    Returns:
        The path written.

    Raises:
        ValueError: step < 0, or config or extra holds something other than
            tensors, numbers, strings, None, lists, tuples and dicts.

    Introduced in chapter 6.
    """
    _check_whole(step, "step", minimum=0)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    _check_plain(config, "config")
    _check_plain(extra, "extra")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": step,
        "model": _unwrap(model).state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "config": config,
        "extra": extra,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save(payload, path)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` into `model` (and `optimizer`).

    The file is read onto the CPU with `weights_only=True`, so it loads on a machine
    without a GPU; `load_state_dict` then copies the values onto the model's own
    device, in place, so tied weights stay one tensor.

    Args:
        path: the checkpoint file.
        model: a model of the same architecture; compiled and DDP-wrapped models are
            unwrapped, and `_orig_mod.`/`module.` prefixes in the file are dropped.
        optimizer: an optimizer over `model`'s parameters to restore as well.

    Returns:
        `{"step": int, "config": dict | None, "extra": dict | None}`.

    Raises:
        FileNotFoundError: there is no file at `path`.
        ValueError: the file is not a course checkpoint, or an optimizer is given
            but the checkpoint holds no optimizer state.
        RuntimeError: the weights do not fit the model (from `load_state_dict`).

    Introduced in chapter 6.
    """
    checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
    if (
        not isinstance(checkpoint, dict)
        or checkpoint.get("format") != CHECKPOINT_FORMAT
    ):
        raise ValueError(
            f"{path} is not a checkpoint written by save_checkpoint; for a bare state "
            "dict use model.load_state_dict(torch.load(path, weights_only=True))"
        )
    _unwrap(model).load_state_dict(_strip_prefixes(checkpoint["model"]))
    if optimizer is not None:
        if checkpoint["optimizer"] is None:
            raise ValueError(
                f"{path} holds no optimizer state; it was saved without an optimizer, "
                "so load it without one (training then restarts Adam's moments)"
            )
        optimizer.load_state_dict(checkpoint["optimizer"])
    return {key: checkpoint[key] for key in ("step", "config", "extra")}


def _atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file next to `path`, fsync, then rename over it."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temp, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside torch.compile's and DDP's (or DataParallel's) wrappers."""
    parallel = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while True:
        if isinstance(model, parallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Drop wrapper prefixes that every key carries (files from other tools)."""
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                stripped = True
    return state


def _check_plain(value: Any, where: str) -> None:
    """Raise ValueError unless `value` holds only what weights_only=True loads."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise ValueError(f"{where} has a key {key!r}; use str or int keys")
            _check_plain(item, f"{where}[{key!r}]")
    else:
        raise ValueError(
            f"{where} holds a {type(value).__name__}, which a weights_only load "
            "refuses; store tensors, numbers, strings, None, lists and dicts "
            "(a dataclass via dataclasses.asdict)"
        )


# --- the training loop ---------------------------------------------------------------


PRECISIONS = ("fp32", "bf16")


def bf16_is_fast(device: str | torch.device = "cpu") -> bool:
    """Whether `device` computes bfloat16 matmuls natively (so bf16 pays off).

    On a CPU that needs AVX512-BF16 or AMX; without them PyTorch emulates bfloat16
    and matmuls run tens of times slower than in float32.

    Introduced in chapter 6.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


@dataclass(frozen=True)
class TrainConfig:
    """The settings of a training run; the defaults are nanoGPT's CPU Shakespeare run.

    Raises:
        ValueError: a size or interval below its minimum, or a bad schedule.

    Introduced in chapter 6.
    """

    max_steps: int = 2000  # optimizer steps in the whole run; the schedule's end
    batch_size: int = 12  # B, windows per step (per process under DDP)
    context_length: int = 64  # T, tokens per window; at most the model's context
    max_lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    min_lr: float = 1e-4  # learning rate at max_steps
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on matrices only, see configure_optimizer
    betas: tuple[float, float] = (0.9, 0.99)  # Adam; 0.99 suits small batches
    grad_clip: float = 1.0  # largest global gradient norm; 0 switches clipping off
    log_interval: int = 10  # read the loss back (one host sync) every this many steps
    eval_interval: int = 250  # estimate train and val loss every this many steps
    eval_batches: int = 20  # batches per loss estimate
    sample_interval: int = 500  # call on_sample every this many steps; 0: never
    checkpoint_path: str | None = None  # None: never save
    checkpoint_interval: int = 0  # save every this many steps; 0: at the end only
    seed: int = 0  # picks the batches (see batch_seed), not the initial weights
    compile: bool = False  # torch.compile the model: faster steps, slow first step
    # "bf16": forward and backward matmuls in bfloat16 (autocast), weights, optimizer
    # and evaluation stay float32. Only where the hardware computes bfloat16 natively.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for name, minimum in (
            ("max_steps", 1),
            ("batch_size", 1),
            ("context_length", 1),
            ("log_interval", 1),
            ("eval_interval", 1),
            ("eval_batches", 1),
            ("sample_interval", 0),
            ("checkpoint_interval", 0),
            ("seed", 0),
        ):
            _check_whole(getattr(self, name), name, minimum=minimum)
        _check_schedule(0, self.max_lr, self.min_lr, self.warmup_steps, self.max_steps)
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {PRECISIONS}, got {self.precision!r}"
            )
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError(
                f"grad_clip and weight_decay must be >= 0, got {self.grad_clip} and "
                f"{self.weight_decay}"
            )

    def lr(self, step: int) -> float:
        """The learning rate of step `step` under this config's schedule."""
        return lr_at(
            min(step, self.max_steps),
            max_lr=self.max_lr,
            min_lr=self.min_lr,
            warmup_steps=self.warmup_steps,
            total_steps=self.max_steps,
        )


History = dict[str, list]
SampleFn = Callable[[nn.Module, int], str | None]  # (model, step) -> text to show


def train(
    model: nn.Module,
    train_tokens: torch.Tensor,
    val_tokens: torch.Tensor,
    config: TrainConfig,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    start_step: int = 0,
    resume: bool = False,
    progress: bool = True,
    plot: bool | None = None,
    on_sample: SampleFn | None = None,
) -> History:
    """Train `model` on random windows of `train_tokens` for `config.max_steps` steps.

    Every step: set the lr from the schedule, draw the step's batch, forward,
    backward, clip the gradient norm, update, clear the gradients. Every
    `log_interval` steps the mean training loss is read back; every
    `eval_interval` steps the train and val losses are estimated on fixed batches
    and a line is printed; every `sample_interval` steps `on_sample` runs; every
    `checkpoint_interval` steps (and at the end) a checkpoint is saved.

    Under `torchrun` pass the DDP-wrapped model: each process draws its own batches
    and only rank 0 shows progress, samples and saves checkpoints.

    Args:
        model: returns `(logits, loss)` for `model(x, y)`, like the course's GPT.
        train_tokens: the training stream, (N_train,) integer ids.
        val_tokens: the validation stream, (N_val,) integer ids.
        config: the run's settings.
        optimizer: defaults to `configure_optimizer` with the config's settings.
        start_step: continue a run at this step (weights and optimizer loaded by
            you); the schedule and the batches continue as if never stopped.
        resume: load `config.checkpoint_path` if it exists (model, optimizer,
            history, RNG state) and continue from its step; a finished run returns
            at once. Without the file, train from the start.
        progress: show a progress bar and one line per evaluation and sample.
        plot: draw a live loss curve, redrawn in place at each evaluation; None
            draws it only inside a Jupyter kernel.
        on_sample: called as `on_sample(model, step)` at sample steps; a string it
            returns is shown and kept in the history (see `text_sampler`).

    Returns:
        The history: "step", "train_loss" (mean over the last log interval), "lr"
        and "ms_per_step" at log points; "eval_step", "eval_train_loss" and
        "val_loss" at evaluations; "samples" as [step, text] pairs.

    Raises:
        ValueError: bad tokens, a context longer than the model's, a bad
            start_step, or resume without a checkpoint_path.

    Introduced in chapter 6.
    """
    core = _unwrap(model)
    _check_train_inputs(core, train_tokens, val_tokens, config, start_step)
    if optimizer is None:
        optimizer = configure_optimizer(
            core, lr=config.max_lr, weight_decay=config.weight_decay, betas=config.betas
        )
    history = _new_history()
    if resume:
        if start_step:
            raise ValueError("give either resume=True or start_step, not both")
        start_step, history = _resume(core, optimizer, config)
    run = _Run(model, optimizer, config, train_tokens, val_tokens, history)
    return run.loop(start_step, progress=progress, plot=plot, on_sample=on_sample)


def text_sampler(
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    prompt: str = "\n",
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> SampleFn:
    """An `on_sample` callback for `train`: the model's continuation of `prompt`.

    Every call reseeds its generator with `seed`, so successive samples differ only
    because the model has learned more.

    Args:
        encode: text -> token ids (e.g. `CharTokenizer.encode`).
        decode: token ids -> text.
        prompt: the text to continue; "\\n" starts as if at a new line.
        max_new_tokens: how many tokens to sample.
        temperature: see `utils.reference.sample_next_token`.
        top_k: keep only the k most likely tokens; None keeps all.
        seed: the sampling seed.

    Returns:
        A function `(model, step) -> str`: the prompt and its continuation.

    Introduced in chapter 6.
    """
    from utils.reference.sampling import generate

    def sample(model: nn.Module, step: int) -> str:
        device = next(model.parameters()).device
        idx = torch.tensor([encode(prompt)], dtype=torch.long, device=device)  # (1, T)
        generator = torch.Generator(device=device).manual_seed(seed)
        out = generate(model, idx, max_new_tokens, temperature, top_k, None, generator)
        return decode(out[0].tolist())  # (1, T + new) -> text

    return sample


def _check_train_inputs(
    core: nn.Module,
    train_tokens: torch.Tensor,
    val_tokens: torch.Tensor,
    config: TrainConfig,
    start_step: int,
) -> None:
    """Raise ValueError for tokens, config or start_step that cannot work."""
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    _check_tokens(train_tokens, config.context_length + 1, "train_tokens")
    _check_tokens(val_tokens, config.context_length + 1, "val_tokens")
    limit = getattr(core, "context_length", None)
    if limit is not None and config.context_length > limit:
        raise ValueError(
            f"config.context_length={config.context_length} exceeds the model's "
            f"context_length={limit}; train on windows of at most {limit} tokens"
        )
    _check_whole(start_step, "start_step", minimum=0)
    if start_step > config.max_steps:
        raise ValueError(
            f"start_step={start_step} is past max_steps={config.max_steps}"
        )


def _new_history() -> History:
    keys = ("step", "train_loss", "lr", "ms_per_step")
    eval_keys = ("eval_step", "eval_train_loss", "val_loss", "samples")
    return {key: [] for key in keys + eval_keys}


def _resume(
    core: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig
) -> tuple[int, History]:
    """Load config.checkpoint_path if it exists: (its step, its history)."""
    if config.checkpoint_path is None:
        raise ValueError("resume=True needs config.checkpoint_path to be set")
    path = Path(config.checkpoint_path)
    if not path.exists():
        return 0, _new_history()
    meta = load_checkpoint(path, core, optimizer)
    extra = meta["extra"] or {}
    saved = extra.get("train_config")
    current = _plain_config(config)
    if saved is not None and {**current, **saved} != current:  # new fields: defaults
        warnings.warn(
            f"{path} was saved under another TrainConfig ({saved}); resuming with "
            "the new one changes the schedule or the batches",
            stacklevel=3,
        )
    if meta["step"] > config.max_steps:
        raise ValueError(
            f"{path} is at step {meta['step']}, past max_steps={config.max_steps}"
        )
    _set_rng_state(extra.get("rng_state"))
    return meta["step"], extra.get("history") or _new_history()


def _plain_config(config: TrainConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()}


def _rng_state() -> dict[str, Any]:
    """The global RNG state (dropout masks come from it), for resuming exactly."""
    # NOTE: under DDP only rank 0 saves, so a resumed run gives every rank rank 0's
    # state; a full implementation saves one state per rank.
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any] | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _dist_rank() -> int:
    """This process's rank under torch.distributed, 0 when it is not running."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class _Run:
    """The state of one call to `train`: the loop and the events between steps."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: TrainConfig,
        train_tokens: torch.Tensor,
        val_tokens: torch.Tensor,
        history: History,
    ) -> None:
        self.core = _unwrap(model)
        self.model = torch.compile(model) if config.compile else model
        self.optimizer, self.config, self.history = optimizer, config, history
        self.device = next(self.core.parameters()).device
        if config.precision == "bf16" and not bf16_is_fast(self.device):
            raise ValueError(
                f"precision='bf16' needs native bfloat16 on {self.device} (a CPU with "
                "AVX512-BF16 or AMX, or a recent GPU); here it would be far slower "
                "than float32: use precision='fp32'"
            )
        self.autocast = torch.autocast(
            self.device.type,
            dtype=torch.bfloat16,
            enabled=config.precision == "bf16",
        )
        self.train_tokens = train_tokens.to(self.device)
        self.val_tokens = val_tokens.to(self.device)
        self.params = [p for p in self.core.parameters() if p.requires_grad]
        self.rank = _dist_rank()
        self.main = self.rank == 0
        self.generator = torch.Generator()  # CPU: reseeded for every step's batch
        self.loss_sum = torch.zeros((), device=self.device)  # since the last log
        self.steps_since_log = 0
        self.train_seconds = 0.0  # spent in steps since the last log
        self.eval_seconds = 0.0  # spent in steps since the last evaluation
        self.bar: Any = None
        self.plot: Any = None
        self.on_sample: SampleFn | None = None

    def loop(
        self, start: int, progress: bool, plot: bool | None, on_sample: SampleFn | None
    ) -> History:
        """Run steps start .. max_steps - 1, with the events between them."""
        config = self.config
        self.start = self.last_eval = start
        self.on_sample = on_sample if self.main else None
        self.plot = _make_live_plot(plot) if self.main else None
        if start == config.max_steps:  # a finished run: nothing to do
            return self.history
        self.bar = tqdm(
            total=config.max_steps,
            initial=start,
            desc="training",
            unit="step",
            disable=not (progress and self.main),
            # one redraw a second: each is a message to the notebook, and a flood of
            # them can overflow the kernel's output queue, which drops messages
            mininterval=1.0,
        )
        try:
            tick = time.perf_counter()
            for step in range(start, config.max_steps):
                if step > start or start == 0:
                    tick = self._between_steps(step, tick)
                self._step(step)
                self.bar.update()
            self._between_steps(config.max_steps, tick)
        finally:
            self.bar.close()
        return self.history

    def _step(self, step: int) -> None:
        """One optimizer step on this step's batch; the loss stays on the device."""
        config = self.config
        lr = config.lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.generator.manual_seed(batch_seed(config.seed, step, self.rank))
        x, y = get_batch(
            self.train_tokens, config.batch_size, config.context_length, self.generator
        )  # (B, T), (B, T)
        with self.autocast:
            _, loss = self.model(x, y)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, config.grad_clip, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_sum += loss.detach()
        self.steps_since_log += 1

    def _between_steps(self, done: int, tick: float) -> float:
        """Events after `done` steps: log, evaluate, sample, save. Returns the clock."""
        config, final = self.config, done == self.config.max_steps
        seconds = time.perf_counter() - tick
        self.train_seconds += seconds
        self.eval_seconds += seconds
        saving = config.checkpoint_path is not None and (
            final
            or (config.checkpoint_interval and done % config.checkpoint_interval == 0)
        )
        if self.steps_since_log and (
            done % config.log_interval == 0 or final or saving
        ):
            self._log(done)
        if done % config.eval_interval == 0 or final:
            self._evaluate(done)
        if (
            self.on_sample
            and config.sample_interval
            and (done % config.sample_interval == 0 or final)
        ):
            self._sample(done)
        if saving and self.main and done > self.start:
            self._save(done)
        return time.perf_counter()

    def _log(self, done: int) -> None:
        """Read the mean training loss back from the device (the one host sync)."""
        # NOTE: under DDP this is rank 0's own loss; an all_reduce would average it
        # over the ranks at the cost of one more synchronisation.
        n = self.steps_since_log
        loss = self.loss_sum.item() / n
        ms = 1000 * self.train_seconds / n
        for key, value in (
            ("step", done),
            ("train_loss", loss),
            ("lr", self.config.lr(done - 1)),
            ("ms_per_step", ms),
        ):
            self.history[key].append(value)
        self.loss_sum.zero_()
        self.steps_since_log, self.train_seconds = 0, 0.0
        self.bar.set_postfix_str(f"loss {loss:.4f}, {ms:.0f} ms/step", refresh=False)

    def _evaluate(self, done: int) -> None:
        """Estimate both losses on fixed batches, print a line, redraw the plot."""
        config, losses = self.config, []
        for tokens in (self.train_tokens, self.val_tokens):
            generator = torch.Generator().manual_seed(config.seed)  # same batches
            losses.append(
                estimate_loss(
                    self.core,
                    tokens,
                    batch_size=config.batch_size,
                    context_length=config.context_length,
                    n_batches=config.eval_batches,
                    generator=generator,
                )
            )
        self.history["eval_step"].append(done)
        self.history["eval_train_loss"].append(losses[0])
        self.history["val_loss"].append(losses[1])
        steps = done - self.last_eval
        timing = f" | {1000 * self.eval_seconds / steps:.0f} ms/step" if steps else ""
        width = len(str(config.max_steps))
        self._write(
            f"step {done:>{width}}/{config.max_steps} | train {losses[0]:.4f} | "
            f"val {losses[1]:.4f} | lr {config.lr(done):.1e}{timing}"
        )
        self.eval_seconds, self.last_eval = 0.0, done
        if self.plot is not None:
            self.plot.update(self.history)

    def _sample(self, done: int) -> None:
        text = self.on_sample(self.core, done)
        if text is not None:
            self.history["samples"].append([done, text])
            self._write(f"--- sample after {done} steps ---\n{text}\n---")

    def _save(self, done: int) -> None:
        config = getattr(self.core, "config", None)
        save_checkpoint(
            self.config.checkpoint_path,
            self.core,
            self.optimizer,
            step=done,
            config=config if dataclasses.is_dataclass(config) else None,
            extra={
                "history": self.history,
                "train_config": _plain_config(self.config),
                "rng_state": _rng_state(),
            },
        )

    def _write(self, line: str) -> None:
        if self.main and not self.bar.disable:
            self.bar.write(line)


def _make_live_plot(plot: bool | None) -> Any:
    """A LiveLossPlot when asked for (or, for None, when inside a Jupyter kernel)."""
    if plot is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return None
        plot = getattr(get_ipython(), "kernel", None) is not None
    if not plot:
        return None
    from utils.plots import LiveLossPlot  # matplotlib only when a plot is wanted

    return LiveLossPlot()


# --- argument checks -----------------------------------------------------------------


def _check_whole(value: Any, name: str, minimum: int) -> None:
    """Raise ValueError unless value is an int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")


def _check_tokens(tokens: Any, min_len: int, name: str) -> None:
    """Raise ValueError unless tokens is a 1-D integer tensor of >= min_len ids."""
    if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (
        torch.int64,
        torch.int32,
    ):
        kind = getattr(tokens, "dtype", type(tokens).__name__)
        raise ValueError(
            f"{name} must be a tensor of token ids (int64 or int32), got {kind}; "
            "encode the text first, e.g. torch.tensor(tokenizer.encode(text))"
        )
    if tokens.dim() != 1 or tokens.numel() < min_len:
        raise ValueError(
            f"{name} must be a 1-D stream of at least {min_len} ids, got shape "
            f"{tuple(tokens.shape)}"
        )

"""Pretraining speed and quality at nanoGPT's CPU quick-start size.

Trains the course's GPT on Tiny Shakespeare (characters) with the settings of
nanoGPT's CPU quick start: 4 layers, 4 heads, width 128, context 64, batch 12, 2,000
iterations, learning rate 1e-3 warming up over 100 steps and decaying to 1e-4, no
dropout, AdamW betas (0.9, 0.99), weight decay 0.1, gradient clipping at 1.0, and 20
evaluation batches every 250 iterations. Then it prints:

- milliseconds per iteration (median over the run, evaluations left out) and tokens
  per second;
- the final train and validation estimates (20 batches each) and the loss over the
  whole validation split;
- the FLOPs of one iteration (counted by PyTorch's FlopCounterMode), the machine's
  measured float32 matmul peak, and the share of that peak training reaches.

With `--baseline` it also times a plain PyTorch GPT of the same size, written as
most tutorials write one (`benchmarks/plain_gpt.py`), before and after the run, and
prints the ratio to the mean of the two. Run it on a quiet machine: other work on the
cores changes every figure, and even a quiet virtual machine drifts by 10-20 %.

By default the matrix products run in bfloat16 (autocast: weights, optimizer state,
attention and evaluation stay float32) where the CPU computes bfloat16 natively
(AVX512-BF16 or AMX), and in float32 elsewhere; `--precision fp32` forces float32.

Run: .venv/bin/python benchmarks/train_speed.py [--baseline] [--compile]
        [--precision auto|fp32|bf16]
"""

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for plain_gpt

from utils.data import shakespeare_char_data  # noqa: E402
from utils.interp import shakespeare_gpt_config  # noqa: E402
from utils.reference import GPT, GPTConfig  # noqa: E402
from utils.training import (  # noqa: E402
    TrainConfig,
    bf16_is_fast,
    evaluate_loss,
    get_batch,
    train,
)

SEED = 1337  # nanoGPT's seed


def model_config(vocab_size: int, positions: str = "rope") -> GPTConfig:
    """nanoGPT's quick-start size: chapter 06's GPT (no biases, the exact GELU).

    The course's model differs from nanoGPT's in one switch: rotary positions
    (`positions="rope"`) instead of a learned table; `--positions learned` gives
    nanoGPT's architecture.
    """
    return dataclasses.replace(shakespeare_gpt_config(vocab_size), positions=positions)


def matmul_peak(seconds: float = 1.0) -> float:
    """The best float32 matmul rate of this machine, in FLOP/s, over a few sizes."""
    best = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        repeats, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            a @ b
            repeats += 1
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start))
    return best


def flops_per_iteration(model: GPT, tokens: torch.Tensor, config: TrainConfig) -> int:
    """The FLOPs of one forward and backward pass, as PyTorch's counter sees them."""
    from torch.utils.flop_counter import FlopCounterMode

    x, y = get_batch(tokens, config.batch_size, config.context_length)
    counter = FlopCounterMode(display=False)
    with counter:
        _, loss = model(x, y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_baseline(tokens: torch.Tensor, vocab_size: int, steps: int) -> float:
    """Median ms per iteration of the plain GPT over `steps` steps."""
    import plain_gpt

    torch.manual_seed(SEED)
    step = plain_gpt.make_step(tokens, vocab_size)
    for _ in range(10):  # warm-up
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--compile", action="store_true", help="torch.compile it")
    parser.add_argument(
        "--baseline", action="store_true", help="first time a plain PyTorch GPT"
    )
    parser.add_argument("--baseline-steps", type=int, default=300)
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="bf16: matmuls in bfloat16 (autocast), which needs AVX512-BF16 or AMX; "
        "auto: bf16 where the CPU has them, else fp32",
    )
    parser.add_argument(
        "--positions", choices=("rope", "learned"), default="rope", help="see GPTConfig"
    )
    args = parser.parse_args()

    data = shakespeare_char_data()
    vocab_size = data.tokenizer.vocab_size
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads | "
        f"train {data.train.numel():,} / val {data.val.numel():,} tokens, "
        f"V = {vocab_size}"
    )
    peak = matmul_peak()
    print(f"float32 matmul peak: {peak / 1e9:.0f} GFLOP/s")

    baseline_ms = None
    if args.baseline:
        baseline_ms = time_baseline(data.train, vocab_size, args.baseline_steps)
        print(f"plain PyTorch GPT: {baseline_ms:.1f} ms/iteration (median)")

    precision = args.precision
    if precision == "auto":
        precision = "bf16" if bf16_is_fast("cpu") else "fp32"
    config = TrainConfig(
        max_steps=args.steps,
        warmup_steps=min(100, args.steps),
        seed=SEED,
        compile=args.compile,
        precision=precision,
        sample_interval=0,
    )
    torch.manual_seed(SEED)
    model = GPT(model_config(vocab_size, args.positions))
    flops = flops_per_iteration(model, data.train, config)
    print(
        f"model: {args.positions} positions, {model.num_parameters():,} parameters, "
        f"{flops / 1e9:.2f} GFLOP/it, {precision}{', compiled' if args.compile else ''}"
    )

    start = time.perf_counter()
    history = train(model, data.train, data.val, config, progress=False, plot=False)
    wall = time.perf_counter() - start
    if args.baseline:
        after = time_baseline(data.train, vocab_size, args.baseline_steps)
        print(f"plain PyTorch GPT, again: {after:.1f} ms/iteration (median)")
        baseline_ms = (baseline_ms + after) / 2
    ms = statistics.median(history["ms_per_step"])
    tokens_per_s = config.batch_size * config.context_length / (ms / 1000)
    whole_val = evaluate_loss(model, data.val, config.context_length)

    print(f"\n{'ms per iteration (median)':32s} {ms:8.1f}")
    if baseline_ms is not None:
        print(f"{'  relative to the plain GPT':32s} {ms / baseline_ms:8.2f}x")
    print(f"{'tokens per second':32s} {tokens_per_s:8.0f}")
    print(f"{'wall time, evaluations included':32s} {wall:8.1f} s")
    print(
        f"{'final train loss (20 batches)':32s} {history['eval_train_loss'][-1]:8.3f}"
    )
    print(f"{'final val loss (20 batches)':32s} {history['val_loss'][-1]:8.3f}")
    print(f"{'val loss, whole split':32s} {whole_val:8.3f}")
    achieved = flops / (ms / 1000)
    print(
        f"{'share of matmul peak':32s} {achieved / peak:8.1%}  "
        f"({achieved / 1e9:.0f} of {peak / 1e9:.0f} GFLOP/s)"
    )


if __name__ == "__main__":
    main()

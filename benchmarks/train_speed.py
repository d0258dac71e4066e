"""Pretraining speed and quality at nanoGPT's CPU quick-start size.

Trains the course's GPT on Tiny Shakespeare (characters) with the settings of
nanoGPT's CPU quick start: 4 layers, 4 heads, width 128, context 64, batch 12, 2,000
iterations, learning rate 1e-3 warming up over 100 steps and decaying to 1e-4, no
dropout, AdamW betas (0.9, 0.99), weight decay 0.1, gradient clipping at 1.0, and 20
evaluation batches every 250 iterations. The model is chapter 06's GPT (rotary
positions) with one change: its MLP is as wide as the stream (`--mlp-ratio 1`)
instead of 4 times as wide, which halves the FLOPs of a step and reaches the same
validation loss at this budget (README.md has the measurements). Then it prints:

- milliseconds per iteration (median over the run, evaluations left out) and tokens
  per second;
- the final train and validation estimates (20 batches each) and the loss over the
  whole validation split;
- the FLOPs of one iteration (counted by PyTorch's FlopCounterMode), the machine's
  measured float32 matmul peak, and the share of that peak training reaches.

With `--baseline` it also times a plain PyTorch GPT of nanoGPT's shape, written as
nanoGPT and most tutorials write one (`benchmarks/plain_gpt.py`), in bursts of 20
steps at the start and after every 100 of ours, and prints the ratio of the two
medians. Run it on a
quiet machine: other work on the cores changes every figure, and even a quiet virtual
machine drifts by 10-20 %.

By default the model runs through `torch.compile` where it works (on a CPU it needs a
C++ compiler; `--compile no` switches it off), and the matrix products run in
bfloat16 (autocast: weights, optimizer state, attention and evaluation stay float32)
where the CPU computes bfloat16 natively (AVX512-BF16 or AMX), in float32 elsewhere
(`--precision fp32` forces float32).

Run: .venv/bin/python benchmarks/train_speed.py [--baseline] [--baseline-burst N]
        [--compile auto|yes|no] [--precision auto|fp32|bf16] [--mlp-ratio N]
        [--positions rope|learned] [--steps N]       (--help says more)
"""

import argparse
import dataclasses
import os
import shutil
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


# The MLP's width, in multiples of D. nanoGPT and chapter 06 use 4; at this budget
# (2,000 steps of 768 tokens) the width buys no loss (see README.md), so the
# benchmark trains the narrowest: half the FLOPs of the 4x MLP's model.
MLP_RATIO = 1


def model_config(
    vocab_size: int, positions: str = "rope", mlp_ratio: int = MLP_RATIO
) -> GPTConfig:
    """nanoGPT's quick-start size: chapter 06's GPT (no biases, the exact GELU).

    The course's model differs from nanoGPT's in two switches: rotary positions
    (`positions="rope"`) instead of a learned table, and an MLP `mlp_ratio` times
    as wide as the stream instead of 4 times. `--positions learned --mlp-ratio 4`
    gives nanoGPT's architecture; `--mlp-ratio 4` alone, chapter 06's model.
    """
    return dataclasses.replace(
        shakespeare_gpt_config(vocab_size), positions=positions, mlp_ratio=mlp_ratio
    )


def compile_works() -> bool:
    """Whether torch.compile runs here, found by compiling a tiny function.

    On a CPU it builds C++ kernels, which needs a C++ compiler and its headers.
    """
    names = (os.environ.get("CXX", ""), "c++", "g++", "clang++")
    if not any(shutil.which(name) for name in names if name):
        print("no C++ compiler found: the model runs eagerly (uncompiled)")
        return False
    try:
        torch.compile(lambda x: torch.sin(x) * 2)(torch.ones(4))
    except Exception as err:  # any failure means: run eagerly
        print(
            f"torch.compile fails here ({type(err).__name__}): the model runs eagerly"
        )
        return False
    return True


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


class InterleavedBaseline:
    """The plain GPT's steps, timed in bursts between the steps of our run.

    `train` calls its `on_sample` callback between steps, outside the time it
    measures, every `sample_interval` steps; as that callback, this object times
    `burst` steps of the plain GPT each time. Both models then share the machine's
    fast and slow moments, which a baseline timed before and after the run does not.

    Args:
        tokens: the training token stream.
        vocab_size: V.
        burst: plain steps per call, timed in groups of 10 like `train`'s log.
    """

    def __init__(self, tokens: torch.Tensor, vocab_size: int, burst: int) -> None:
        import plain_gpt

        with torch.random.fork_rng(devices=[]):  # leave our run's random state alone
            torch.manual_seed(SEED)
            self.step = plain_gpt.make_step(tokens, vocab_size)
            for _ in range(10):  # warm-up
                self.step()
        self.burst, self.group_ms, self.seconds = burst, [], 0.0

    def __call__(self, model: torch.nn.Module, step: int) -> None:
        """Time one burst (an `on_sample` callback that returns no sample)."""
        with torch.random.fork_rng(devices=[]):
            for _ in range(self.burst // 10):
                start = time.perf_counter()
                for _ in range(10):
                    self.step()
                seconds = time.perf_counter() - start
                self.group_ms.append(100 * seconds)
                self.seconds += seconds

    @property
    def ms(self) -> float:
        """Median ms per step over the groups of 10 timed so far."""
        return statistics.median(self.group_ms)


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=positive_int, default=2000, help="training iterations"
    )
    parser.add_argument(
        "--compile",
        nargs="?",
        choices=("auto", "yes", "no"),
        const="yes",
        default="auto",
        help="torch.compile the model (a bare --compile means yes); auto: where a "
        "test compile works (on a CPU it needs a C++ compiler)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also time a plain PyTorch GPT, in bursts between our steps",
    )
    parser.add_argument(
        "--baseline-burst",
        type=positive_int,
        default=20,
        help="with --baseline: plain steps timed at the start and after every 100 "
        "of ours, a multiple of 10",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="bf16: matmuls in bfloat16 (autocast), which needs AVX512-BF16 or AMX; "
        "auto: bf16 where the CPU has them, else fp32",
    )
    parser.add_argument(
        "--positions",
        choices=("rope", "learned"),
        default="rope",
        help="rotary positions or a learned table (nanoGPT); see GPTConfig",
    )
    parser.add_argument(
        "--mlp-ratio",
        type=positive_int,
        default=MLP_RATIO,
        help="the MLP's width in multiples of D (nanoGPT and chapter 06: 4)",
    )
    args = parser.parse_args()
    if args.baseline_burst % 10:
        parser.error(
            f"--baseline-burst must be a multiple of 10 (timed in groups of 10), got "
            f"{args.baseline_burst}"
        )

    data = shakespeare_char_data()
    vocab_size = data.tokenizer.vocab_size
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads | "
        f"train {data.train.numel():,} / val {data.val.numel():,} tokens, "
        f"V = {vocab_size}"
    )
    peak = matmul_peak()
    print(f"float32 matmul peak: {peak / 1e9:.0f} GFLOP/s")

    baseline = None
    if args.baseline:
        baseline = InterleavedBaseline(data.train, vocab_size, args.baseline_burst)

    compile_model = args.compile == "yes" or (
        args.compile == "auto" and compile_works()
    )
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if bf16_is_fast("cpu") else "fp32"
    config = TrainConfig(
        max_steps=args.steps,
        warmup_steps=min(100, args.steps),
        seed=SEED,
        compile=compile_model,
        precision=precision,
        sample_interval=100 if baseline else 0,  # the baseline's bursts
    )
    torch.manual_seed(SEED)
    model = GPT(model_config(vocab_size, args.positions, args.mlp_ratio))
    flops = flops_per_iteration(model, data.train, config)
    print(
        f"model: {args.positions} positions, MLP {args.mlp_ratio}x, "
        f"{model.num_parameters():,} parameters, "
        f"{flops / 1e9:.2f} GFLOP/it, {precision}, "
        f"{'compiled' if compile_model else 'eager'}"
    )

    start = time.perf_counter()
    quiet = dict(progress=False, plot=False)
    history = train(model, data.train, data.val, config, **quiet, on_sample=baseline)
    wall = time.perf_counter() - start - (baseline.seconds if baseline else 0.0)
    ms = statistics.median(history["ms_per_step"])
    tokens_per_s = config.batch_size * config.context_length / (ms / 1000)
    whole_val = evaluate_loss(model, data.val, config.context_length)

    print(f"\n{'ms per iteration (median)':32s} {ms:8.1f}")
    if baseline is not None:
        steps = 10 * len(baseline.group_ms)
        label = f"plain GPT, {steps} steps between"
        print(f"{label:32s} {baseline.ms:8.1f}")
        print(f"{'ours relative to the plain GPT':32s} {ms / baseline.ms:8.2f}x")
    print(f"{'tokens per second':32s} {tokens_per_s:8.0f}")
    print(f"{'wall time (compile, evaluations)':32s} {wall:8.1f} s")
    print(
        f"{'final train loss (20 batches)':32s} {history['eval_train_loss'][-1]:8.3f}"
    )
    print(f"{'final val loss (20 batches)':32s} {history['val_loss'][-1]:8.3f}")
    print(f"{'val loss, whole split':32s} {whole_val:8.3f}")
    achieved = flops / (ms / 1000)
    print(
        f"{'share of float32 matmul peak':32s} {achieved / peak:8.1%}  "
        f"({achieved / 1e9:.0f} of {peak / 1e9:.0f} GFLOP/s)"
    )


if __name__ == "__main__":
    main()

"""Print how fast the course's pretrained models load and answer on this machine.

Figures, not a test: a cached SmolLM2 load (the design's budget is 5 s), the next-token
step, greedy decoding with `transformers`, and the few-shot classifier of chapter 01.

Run: .venv/bin/python benchmarks/model_speed.py
"""

import statistics
import subprocess
import sys
import time

import torch

from utils.models import load_minilm, load_smollm2
from utils.prompting import classify_by_prompt, generate, next_token_logits

LOAD_SNIPPET = (
    "import time; from utils.models import load_smollm2; t = time.perf_counter(); "
    "load_smollm2(); print(time.perf_counter() - t)"
)


def timed(fn, repeats: int = 3) -> float:
    """Median wall time of `fn()` in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    load_smollm2()  # makes sure the float32 cache exists
    fresh = [
        float(subprocess.check_output([sys.executable, "-c", LOAD_SNIPPET]))
        for _ in range(3)
    ]
    print(f"SmolLM2 cached load in a new process: {statistics.median(fresh):.2f} s")
    print(f"MiniLM load: {timed(load_minilm):.2f} s")

    model, tokenizer = load_smollm2()
    prompt = "The capital of France is"
    step = timed(lambda: next_token_logits(model, tokenizer, prompt))
    print(f"next-token logits, 5-token prompt: {1000 * step:.0f} ms")
    question = [{"role": "user", "content": "What is the capital of France?"}]
    n_new = 32
    seconds = timed(lambda: generate(model, tokenizer, question, n_new), repeats=1)
    print(f"greedy decoding: {n_new / seconds:.1f} tokens/s (transformers generate)")
    texts = ["Win a free prize now! Text WIN to 80082", "See you at lunch?"] * 5
    examples = [("ham", "Are we still on for tonight?"), ("spam", "URGENT! Claim £500")]
    instruction = "Classify each SMS message as spam or ham. Answer with one word."
    seconds = timed(
        lambda: classify_by_prompt(
            model, tokenizer, texts, ("ham", "spam"), instruction, examples
        ),
        repeats=1,
    )
    print(f"few-shot classification: {1000 * seconds / len(texts):.0f} ms per message")


if __name__ == "__main__":
    main()

"""Greedy decoding speed: the course's LLaMA with its KV cache vs `transformers`.

Both decode 128 new tokens greedily from the same chat prompt with the same SmolLM2
weights (float32, CPU). The runs alternate (ours, theirs, ours, ...) so that load from
other processes hits both alike; the script prints the median tokens per second of
each, the ratios, and whether the tokens are identical. Neither stops at the
end-of-sequence token, so that both produce exactly 128 tokens.

Our path without a cache recomputes the whole sequence at every step; it is slow, so
it runs once. `transformers` runs on PyTorch's default thread count; our cached steps
run on the count `decode_threads` measures to be faster (one or all).

Run: .venv/bin/python benchmarks/generate_speed.py [--new-tokens 128] [--repeats 3]
"""

import argparse
import os
import statistics
import time

import torch

from utils.models import load_smollm2
from utils.reference.llama import decode_threads, from_hf, generate

QUESTION = "Explain in a few sentences why the sky is blue."


def timed(fn) -> tuple[float, torch.Tensor]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-no-cache", action="store_true")
    args = parser.parse_args()
    n_new = args.new_tokens

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    hf_model, tokenizer = load_smollm2()
    model = from_hf(hf_model)
    chat = [{"role": "user", "content": QUESTION}]
    ids = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]  # (1, T)
    print(f"prompt: {ids.size(1)} tokens; decoding {n_new} new tokens greedily")

    def ours() -> torch.Tensor:
        return generate(model, ids, n_new, use_cache=True)

    def theirs() -> torch.Tensor:
        with torch.inference_mode():
            return hf_model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n_new,
                do_sample=False,
                eos_token_id=None,  # never stop early: always n_new tokens
                pad_token_id=tokenizer.eos_token_id,
            )

    ours(), theirs()  # warm-up: first calls allocate and pick kernels
    print(f"our cached steps run on {decode_threads(model)} thread(s) (decode_threads)")
    times = {"ours": [], "transformers": []}
    for _ in range(args.repeats):
        seconds, out_ours = timed(ours)
        times["ours"].append(seconds)
        seconds, out_theirs = timed(theirs)
        times["transformers"].append(seconds)
    speed = {k: n_new / statistics.median(v) for k, v in times.items()}
    for name, value in speed.items():
        spread = ", ".join(f"{n_new / s:.1f}" for s in times[name])
        print(f"{name:>22}: {value:5.1f} tokens/s  (runs: {spread})")

    same = torch.equal(out_ours, out_theirs)
    print(f"identical tokens: {same} ({out_ours.size(1) - ids.size(1)} new each)")
    print(f"ours / transformers: {speed['ours'] / speed['transformers']:.2f}x")
    if not args.skip_no_cache:
        seconds, out_plain = timed(lambda: generate(model, ids, n_new, use_cache=False))
        plain = n_new / seconds
        print(f"{'ours without cache':>22}: {plain:5.1f} tokens/s  (one run)")
        print(f"cache / no cache: {speed['ours'] / plain:.2f}x")
        print(f"no-cache tokens identical: {torch.equal(out_plain, out_ours)}")
    print(tokenizer.decode(out_ours[0, ids.size(1) :])[:300].replace("\n", " "))
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()

"""The chapter 6 training loop on several processes, with DistributedDataParallel.

Run it with PyTorch's launcher, which starts one process per rank:

    torchrun --standalone --nproc_per_node 2 -m utils.train_ddp --steps 5 --out DIR

Every process builds the same tiny GPT, wraps it in `DistributedDataParallel` and
calls the ordinary `utils.training.train`. Each draws its own batches (the batch seed
includes the rank); after `backward` DDP averages the gradients over all processes,
so every optimizer step is the same everywhere and the weights stay equal. Only rank
0 prints and writes the checkpoint. Each rank writes `rank<r>.json` to DIR with a
hash of its weights before and after training, so a test can compare them.

On CPUs the processes talk through the "gloo" backend; with GPUs, through "nccl".
"""

import argparse
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from utils.data import shakespeare_char_data
from utils.reference.gpt import GPT, GPTConfig
from utils.system import set_seed
from utils.training import TrainConfig, batch_seed, get_batch, train


def weights_sha256(model: nn.Module) -> str:
    """A hash of every value in the model's state dict, in key order.

    Args:
        model: any module; equal hashes mean bit-for-bit equal weights.

    Returns:
        The hex sha256.

    Introduced in chapter 6.
    """
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: steps, output folder and the tiny model's sizes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="B per process")
    parser.add_argument("--context-length", type=int, default=32, help="T")
    parser.add_argument("--d-model", type=int, default=32, help="D")
    parser.add_argument("--n-layers", type=int, default=2, help="L")
    parser.add_argument("--n-heads", type=int, default=4, help="H")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Train on every rank, then write `rank<r>.json` (and, on rank 0, the
    checkpoint `checkpoint.pt`) to the output folder.

    Raises:
        RuntimeError: not started by torchrun (no RANK/WORLD_SIZE in the environment).

    Introduced in chapter 6.
    """
    args = parse_args(argv)
    if "RANK" not in os.environ:
        raise RuntimeError(
            "start this module with torchrun, e.g. torchrun --standalone "
            "--nproc_per_node 2 -m utils.train_ddp --steps 5 --out DIR"
        )
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        _train_and_report(args, dist.get_rank(), dist.get_world_size())
    finally:
        dist.destroy_process_group()


def _train_and_report(args: argparse.Namespace, rank: int, world_size: int) -> None:
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    data = shakespeare_char_data()
    set_seed(args.seed)  # the same initial weights on every rank
    model = GPT(
        GPTConfig(
            vocab_size=data.tokenizer.vocab_size,
            context_length=args.context_length,
            n_layers=args.n_layers,
            n_heads=args.n_heads,
            d_model=args.d_model,
        )
    ).to(device)
    init_hash = weights_sha256(model)
    torch.manual_seed(args.seed + rank)  # dropout masks may differ between ranks
    ddp_model = DistributedDataParallel(
        model, device_ids=[local_rank] if cuda else None
    )
    args.out.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(
        max_steps=args.steps,
        batch_size=args.batch_size,
        context_length=args.context_length,
        warmup_steps=min(2, args.steps),
        log_interval=1,
        eval_interval=args.steps,
        eval_batches=2,
        checkpoint_path=str(args.out / "checkpoint.pt"),
        seed=args.seed,
    )
    history = train(ddp_model, data.train, data.val, config, progress=not args.quiet)

    generator = torch.Generator().manual_seed(batch_seed(args.seed, 0, rank))
    first_x, _ = get_batch(data.train, args.batch_size, args.context_length, generator)
    report = {
        "rank": rank,
        "world_size": world_size,
        "init_sha256": init_hash,
        "final_sha256": weights_sha256(model),
        "first_batch_sha256": hashlib.sha256(first_x.numpy().tobytes()).hexdigest(),
        "train_loss": history["train_loss"],
    }
    (args.out / f"rank{rank}.json").write_text(json.dumps(report, indent=2))
    if rank == 0 and not args.quiet:
        final = report["final_sha256"][:12]
        print(f"{world_size} ranks, {args.steps} steps, final weights {final}")


if __name__ == "__main__":
    main()

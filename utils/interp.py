"""Looking inside trained models: attention capture, head ablation, the logit lens.

Everything here works on two kinds of model with one interface:

- the course's GPT (`utils.reference.gpt.GPT`), such as chapter 6's Shakespeare model,
  which `load_shakespeare_gpt` loads from its checkpoint or trains again;
- a LLaMA-style `transformers` causal LM such as SmolLM2 (`utils.models`).

`model_parts` finds the pieces the tools need in either: the blocks, each block's
attention output projection (whose input holds the heads side by side), the final
norm and the output head. Head ablation is a forward pre-hook on an output
projection that zeroes one head's slice of its input; the logit lens applies the
final norm and the head to the residual stream after every block.

Introduced in chapter 7.
"""

import contextlib
import dataclasses
import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from utils.data import CharData, shakespeare_char_data
from utils.paths import cache_dir
from utils.reference.gpt import GPT, GPTConfig
from utils.reference.interp import induction_score
from utils.training import TrainConfig, load_checkpoint, train

SHAKESPEARE_SEED = 1337  # chapter 6's seed: the initial weights and the batches
SHAKESPEARE_CHECKPOINT = "ch06_gpt_rope.pt"  # chapter 6 saves here, in cache_dir()

Head = tuple[int, int]  # (layer, head)


# --- chapter 6's model -----------------------------------------------------------


def shakespeare_gpt_config(vocab_size: int = 65) -> GPTConfig:
    """Chapter 6's GPT: 4 layers, 4 heads, width 128, context 64, RoPE, no biases.

    Args:
        vocab_size: V, the characters of Tiny Shakespeare (65).

    Returns:
        The `GPTConfig` chapter 6 trains.

    Introduced in chapter 7.
    """
    return GPTConfig(
        vocab_size=vocab_size,
        context_length=64,
        n_layers=4,
        n_heads=4,
        d_model=128,
        dropout=0.0,
        bias=False,
        activation="gelu_exact",
        positions="rope",
    )


def load_shakespeare_gpt(
    checkpoint: str | Path | None = None,
    data: CharData | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    train_config: TrainConfig | None = None,
) -> tuple[GPT, bool]:
    """Chapter 6's trained GPT: loaded from its checkpoint, or trained if it is missing.

    Training repeats chapter 6's run exactly (seed 1337, `TrainConfig`'s defaults,
    about two minutes on two CPU cores, with a progress bar) and saves the
    checkpoint, so the next call loads it.

    Args:
        checkpoint: the checkpoint file; defaults to `data/cache/ch06_gpt_rope.pt`.
        data: Tiny Shakespeare encoded by characters; loaded when None.
        device: where the model goes.
        progress: show the progress bar and the evaluation lines while training.
        train_config: the run to do when the checkpoint is missing; defaults to
            chapter 6's (tests pass a short one). Its checkpoint_path is replaced
            by `checkpoint`.

    Returns:
        `(model, trained)`: the GPT in eval mode, and whether it was trained now.

    Raises:
        ValueError: the checkpoint holds a model with another config (delete it
            and run again to train a new one).

    Introduced in chapter 7.
    """
    path = Path(checkpoint) if checkpoint is not None else _default_checkpoint()
    data = shakespeare_char_data() if data is None else data
    config = shakespeare_gpt_config(data.tokenizer.vocab_size)
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(SHAKESPEARE_SEED)  # chapter 6's initial weights
        model = GPT(config)
    wanted = dataclasses.asdict(config)
    trained = not path.exists()
    if trained:
        run = train_config or TrainConfig(seed=SHAKESPEARE_SEED)
        run = dataclasses.replace(run, checkpoint_path=str(path))
        train(model, data.train, data.val, run, progress=progress, plot=False)
    else:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        stored = saved.get("config") if isinstance(saved, dict) else None
        # a config field added since the file was saved reads as its default
        if stored is not None and {**wanted, **stored} != wanted:
            raise ValueError(
                f"{path} holds a model with config {saved['config']}, not chapter "
                f"6's {wanted}; delete the file to train it again"
            )
        load_checkpoint(path, model)
    return model.to(device).eval(), trained


def _default_checkpoint() -> Path:
    return cache_dir() / SHAKESPEARE_CHECKPOINT


# --- the pieces of a model --------------------------------------------------------


@dataclass
class ModelParts:
    """What the tools need from a model, found by `model_parts`.

    Introduced in chapter 7.
    """

    embedding: nn.Module  # its output is the residual stream before block 0
    blocks: Sequence[nn.Module]  # L blocks; each returns the stream after it
    out_projs: Sequence[nn.Linear]  # per block: its input is H heads of Dh side by side
    n_heads: int  # H
    head_dim: int  # Dh
    final_norm: nn.Module  # applied to the last stream before the head
    head: nn.Module  # the output head, stream -> logits (B, T, V)


def model_parts(model: nn.Module) -> ModelParts:
    """Find the blocks, attention output projections, final norm and head of a model.

    Args:
        model: the course's `GPT`, or a LLaMA-style `transformers` causal LM
            (`model.model.layers[i].self_attn.o_proj`, `model.model.norm`,
            `model.lm_head`), such as SmolLM2.

    Returns:
        A `ModelParts`.

    Raises:
        TypeError: the model is neither.

    Introduced in chapter 7.
    """
    if isinstance(model, GPT):
        config = model.config
        return ModelParts(
            embedding=model.drop,  # token vectors (+ positions), after dropout
            blocks=list(model.blocks),
            out_projs=[block.attn.out_proj for block in model.blocks],
            n_heads=config.n_heads,
            head_dim=config.head_dim,
            final_norm=model.norm_f,
            head=model.lm_head,
        )
    body = getattr(model, "model", None)
    layers = getattr(body, "layers", None)
    if layers is None or not hasattr(model, "lm_head"):
        raise TypeError(
            f"expected the course's GPT or a LLaMA-style transformers causal LM, got "
            f"{type(model).__name__}; load SmolLM2 with utils.models.load_smollm2"
        )
    config = model.config
    n_heads = config.num_attention_heads
    return ModelParts(
        embedding=body.embed_tokens,
        blocks=list(layers),
        out_projs=[layer.self_attn.o_proj for layer in layers],
        n_heads=n_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // n_heads,
        final_norm=body.norm,
        head=model.lm_head,
    )


@torch.no_grad()
def model_logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """Next-token logits of either kind of model, (B, T) ids -> (B, T, V).

    Introduced in chapter 7.
    """
    if isinstance(model, GPT):
        return model(idx)[0]
    return model(input_ids=idx).logits


@torch.no_grad()
def token_losses(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """The loss of every next-token prediction in idx.

    Args:
        model: the course's GPT or a `transformers` causal LM.
        idx: token ids, (B, T) with T >= 2.

    Returns:
        (B, T - 1): entry t is the cross-entropy of predicting idx[:, t + 1].

    Raises:
        ValueError: idx is not (B, T) with T >= 2 (one token has no next token).

    Introduced in chapter 7.
    """
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.size(1) < 2:
        raise ValueError(
            "idx must be token ids of shape (B, T) with T >= 2, since a prediction "
            f"needs a next token to score; got {_shape_text(idx)}"
            + ("; for one sequence use idx[None]" if _is_1d(idx) else "")
        )
    logits = model_logits(model, idx)[:, :-1]  # (B, T - 1, V)
    targets = idx[:, 1:]  # (B, T - 1)
    loss = F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), reduction="none"
    )
    return loss.view(targets.shape)  # (B * (T - 1),) -> (B, T - 1)


def copy_losses(losses: torch.Tensor, period: int) -> tuple[float, float]:
    """The mean loss of the predictions inside each copy of a repeated block.

    The ids end with a random block of P tokens written twice, after any prefix,
    and entry t of `losses` scores the prediction of token t + 1 (`token_losses`).
    Counting from the start of the block, entries 0 .. P - 2 predict tokens 1 .. P - 1
    of the first copy and entries P .. 2P - 2 predict tokens 1 .. P - 1 of the
    second. Entry P - 1 predicts the second copy's first token, which nothing can
    foresee, so it belongs to neither; so does any prediction in the prefix.

    Args:
        losses: (B, N) losses from `token_losses`, N >= 2P - 1.
        period: P, the block's length, at least 2.

    Returns:
        `(first, second)`: the mean over the P - 1 predictions of each copy and
        the batch, in nats per token.

    Raises:
        ValueError: period < 2, or fewer than 2P - 1 predictions.

    Introduced in chapter 7.
    """
    period = _whole_number(period, "period")
    if not isinstance(losses, torch.Tensor) or losses.dim() != 2:
        raise ValueError(
            "losses must be a (B, N) tensor from token_losses, got "
            f"{_shape_text(losses)}"
        )
    n_preds = losses.size(1)
    if period < 2 or n_preds < 2 * period - 1:
        raise ValueError(
            f"need period >= 2 and at least 2 * period - 1 = {2 * period - 1} "
            f"predictions, got period={period} and {n_preds} predictions"
        )
    first = losses[:, n_preds - 2 * period + 1 : n_preds - period]  # (B, P - 1)
    second = losses[:, n_preds - period + 1 :]  # (B, P - 1)
    return first.mean().item(), second.mean().item()


# --- attention weights ------------------------------------------------------------


@torch.no_grad()
def gpt_attention_maps(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Run the course's GPT once and return every block's attention weights.

    Each block's attention keeps its weights while `store_weights` is on (which also
    turns the fused kernel off); the switch is restored afterwards.

    Args:
        model: the course's GPT.
        idx: token ids, (B, T).

    Returns:
        L tensors, each (B, H, T, T), on the model's device.

    Introduced in chapter 7.
    """
    attns = [block.attn for block in model.blocks]
    stored = [attn.store_weights for attn in attns]
    try:
        for attn in attns:
            attn.store_weights = True
        model(idx)
        return tuple(attn.last_weights for attn in attns)
    finally:
        for attn, was in zip(attns, stored, strict=True):
            attn.store_weights, attn.last_weights = was, None


def attention_weights(model: nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every layer's attention weights for either kind of model.

    Args:
        model: the course's GPT, or a `transformers` model loaded with eager
            attention (`load_smollm2(attn_weights=True)`).
        idx: token ids, (B, T).

    Returns:
        L tensors, each (B, H, T, T).

    Raises:
        RuntimeError: a `transformers` model returned no weights (not eager).

    Introduced in chapter 7.
    """
    if isinstance(model, GPT):
        return gpt_attention_maps(model, idx)
    from utils.models import attention_maps

    return attention_maps(model, idx)


def gpt_attention_fn(model: GPT, tokenizer: Any, max_tokens: int = 64):
    """Adapt the course's GPT and a character tokenizer for `AttentionExplorer`.

    Args:
        model: the course's GPT.
        tokenizer: has `encode(text) -> list[int]` and `decode(ids) -> str`.
        max_tokens: longer texts are cut to their first `max_tokens` tokens.

    Returns:
        A function: text -> (T token strings, L tensors of shape (H, T, T)).

    Introduced in chapter 7.
    """
    device = next(model.parameters()).device

    def run(text: str) -> tuple[list[str], list[torch.Tensor]]:
        if not text.strip():
            raise ValueError("the text is empty; type a line to look at")
        ids = tokenizer.encode(text)[: min(max_tokens, model.context_length)]
        idx = torch.tensor([ids], device=device)  # (1, T)
        maps = gpt_attention_maps(model, idx)
        tokens = [tokenizer.decode([i]) for i in ids]
        return tokens, [m[0].cpu() for m in maps]  # L x (H, T, T)

    return run


# --- head ablation ----------------------------------------------------------------


@contextlib.contextmanager
def ablate_heads(model: nn.Module, heads: Iterable[Head]) -> Iterator[None]:
    """Zero the output of chosen heads inside the block.

    A forward pre-hook on each affected block's attention output projection zeroes
    the head's Dh-wide slice of the projection's input, so that head adds nothing
    to the residual stream; the projection's bias (if any) stays.

    Args:
        model: the course's GPT or a LLaMA-style `transformers` causal LM.
        heads: a list of (layer, head) pairs of ints, e.g. `[(0, 3)]`; an empty
            list changes nothing.

    Raises:
        TypeError: heads is not a list of (layer, head) pairs of whole numbers.
        ValueError: a layer or head index is out of range.

    Introduced in chapter 7.
    """
    parts = model_parts(model)
    by_layer: dict[int, list[int]] = {}
    for layer, head in _head_pairs(heads):
        if not (0 <= layer < len(parts.blocks) and 0 <= head < parts.n_heads):
            raise ValueError(
                f"head ({layer}, {head}) does not exist: the model has "
                f"{len(parts.blocks)} layers of {parts.n_heads} heads, counted from 0"
            )
        by_layer.setdefault(layer, []).append(head)
    handles = []
    try:
        for layer, chosen in by_layer.items():
            hook = _zero_heads_hook(chosen, parts.head_dim)
            handles.append(parts.out_projs[layer].register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _head_pairs(heads: Any) -> list[Head]:
    """heads as a list of (layer, head) ints, or a TypeError that shows the form."""
    usage = "pass a list of (layer, head) pairs, e.g. [(0, 3)] or [(0, 3), (1, 2)]"
    if isinstance(heads, torch.Tensor | str) or not isinstance(heads, Iterable):
        raise TypeError(f"heads must be a list of pairs, got {heads!r}; {usage}")
    pairs = []
    for pair in heads:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise TypeError(
                f"each entry of heads must be a (layer, head) pair, got {pair!r} in "
                f"{heads!r}; {usage}"
            )
        try:
            pairs.append(
                (_whole_number(pair[0], "layer"), _whole_number(pair[1], "head"))
            )
        except ValueError as err:
            raise TypeError(f"{err} in the pair {pair!r}; {usage}") from None
    return pairs


def _zero_heads_hook(heads: list[int], head_dim: int):
    """A pre-hook that zeroes the given heads' slices of the input (B, T, H * Dh)."""

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]):
        x = args[0].clone()
        for head in heads:
            x[..., head * head_dim : (head + 1) * head_dim] = 0.0
        return (x, *args[1:])

    return hook


@torch.no_grad()
def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The mean cross-entropy of the model's predictions for x against targets y.

    Args:
        model: the course's GPT or a `transformers` causal LM.
        x: inputs, (B, T).
        y: targets, (B, T).

    Returns:
        The loss in nats per token.

    Raises:
        ValueError: x and y differ in shape.

    Introduced in chapter 7.
    """
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape (B, T), got {tuple(x.shape)} and "
            f"{tuple(y.shape)}; y holds the next token of each position of x"
        )
    logits = model_logits(model, x)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()).item()


@torch.no_grad()
def head_ablation_losses(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, torch.Tensor]:
    """The loss with every head on, and with each head zeroed on its own.

    Args:
        model: the course's GPT or a LLaMA-style `transformers` causal LM.
        x: inputs, (B, T), e.g. fixed windows of the validation split.
        y: their targets, (B, T).

    Returns:
        `(base, losses)`: the loss of the intact model, and an (L, H) tensor whose
        entry [l, h] is the loss with head h of layer l zeroed.

    Introduced in chapter 7.
    """
    parts = model_parts(model)
    base = mean_loss(model, x, y)
    losses = torch.zeros(len(parts.blocks), parts.n_heads)
    for layer in range(len(parts.blocks)):
        for head in range(parts.n_heads):
            with ablate_heads(model, [(layer, head)]):
                losses[layer, head] = mean_loss(model, x, y)
    return base, losses


# --- induction heads --------------------------------------------------------------


def repeated_random_tokens(
    vocab_size: int,
    period: int,
    n_seqs: int,
    seed: int = 0,
    prefix: Sequence[int] = (),
    low: int = 0,
) -> torch.Tensor:
    """Random blocks of tokens, each written twice: the test bed for induction heads.

    In the first copy the next token is unpredictable; in the second a model that
    copies from the first copy can predict every token but the first.

    Args:
        vocab_size: tokens are drawn uniformly from [low, vocab_size).
        period: P, the length of the random block.
        n_seqs: B, the number of sequences.
        seed: picks the tokens.
        prefix: token ids put before every sequence (e.g. a start token).
        low: the smallest id drawn (to skip special tokens).

    Returns:
        (B, len(prefix) + 2 P) int64 ids.

    Raises:
        ValueError: period or n_seqs < 1, or an empty range of ids.

    Introduced in chapter 7.
    """
    if period < 1 or n_seqs < 1 or not 0 <= low < vocab_size:
        raise ValueError(
            f"need period >= 1, n_seqs >= 1 and 0 <= low < vocab_size, got "
            f"period={period}, n_seqs={n_seqs}, low={low}, vocab_size={vocab_size}"
        )
    generator = torch.Generator().manual_seed(seed)
    block = torch.randint(low, vocab_size, (n_seqs, period), generator=generator)
    start = torch.tensor(list(prefix), dtype=torch.long).expand(n_seqs, -1)
    return torch.cat([start, block, block], dim=1)  # (B, len(prefix) + 2 P)


@torch.no_grad()
def induction_scores(model: nn.Module, idx: torch.Tensor, period: int) -> torch.Tensor:
    """The induction score of every head, averaged over a batch of repeated blocks.

    Args:
        model: the course's GPT, or a `transformers` model with eager attention.
        idx: (B, T) ids that end with a block of `period` tokens written twice
            (see `repeated_random_tokens`).
        period: P, the block's length.

    Returns:
        (L, H) scores in [0, 1] (see `utils.reference.interp.induction_score`).

    Introduced in chapter 7.
    """
    maps = attention_weights(model, idx)  # L x (B, H, T, T)
    weights = torch.stack([m.float().cpu() for m in maps])  # (L, B, H, T, T)
    return induction_score(weights, period).mean(dim=1)  # (L, B, H) -> (L, H)


def top_heads(scores: torch.Tensor, k: int = 5) -> list[tuple[int, int, float]]:
    """The k heads with the largest scores, largest first.

    Args:
        scores: (L, H) one number per head.
        k: how many to return, at least 0; more than L * H returns all heads.

    Returns:
        `(layer, head, score)` triples.

    Raises:
        ValueError: scores is not a 2-D (L, H) tensor, or k < 0.

    Introduced in chapter 7.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise ValueError(
            "scores must be a 2-D tensor, one number per head (L, H), got "
            f"{_shape_text(scores)}; average any batch axis first, e.g. .mean(dim=1)"
        )
    k = _whole_number(k, "k")
    if k < 0:
        raise ValueError(f"k must be >= 0 (how many heads to return), got {k}")
    n_heads = scores.size(1)
    best = scores.flatten().topk(min(k, scores.numel()))
    return [
        (i // n_heads, i % n_heads, v)
        for v, i in zip(best.values.tolist(), best.indices.tolist(), strict=True)
    ]


# --- the logit lens ---------------------------------------------------------------


@torch.no_grad()
def residual_stream(model: nn.Module, idx: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream before the first block and after every block.

    Args:
        model: the course's GPT or a LLaMA-style `transformers` causal LM.
        idx: token ids, (B, T).

    Returns:
        L + 1 tensors, each (B, T, D): entry 0 is the embedding, entry l the
        stream after block l - 1 (before the final norm).

    Introduced in chapter 7.
    """
    parts = model_parts(model)
    streams: list[torch.Tensor] = []

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        streams.append(output[0] if isinstance(output, tuple) else output)

    modules = [parts.embedding, *parts.blocks]
    handles = [m.register_forward_hook(keep) for m in modules]
    try:
        model_logits(model, idx)
    finally:
        for handle in handles:
            handle.remove()
    if len(streams) != len(modules):
        raise RuntimeError(f"expected {len(modules)} streams, got {len(streams)}")
    return streams


@torch.no_grad()
def logit_lens(model: nn.Module, idx: torch.Tensor, position: int = -1) -> torch.Tensor:
    """Read the residual stream after each block as if it were the last one.

    The final norm and the output head turn the stream at `position` into
    next-token logits, layer by layer. After the last block this is exactly the
    model's own output.

    Args:
        model: the course's GPT or a LLaMA-style `transformers` causal LM.
        idx: token ids, (B, T).
        position: which position's prediction to read (default: the last).

    Returns:
        (L + 1, B, V) logits: row 0 from the embeddings, row l after block l - 1.

    Raises:
        ValueError: position is not a position of idx, in [-T, T).

    Introduced in chapter 7.
    """
    parts = model_parts(model)
    position = _whole_number(position, "position")
    seq_len = idx.size(-1) if isinstance(idx, torch.Tensor) and idx.dim() else 0
    if not -seq_len <= position < seq_len:
        raise ValueError(
            f"position={position} is outside the sequence of T={seq_len} tokens; "
            f"pass a position in [-{seq_len}, {seq_len}), e.g. -1 for the last token"
        )
    streams = residual_stream(model, idx)  # (L + 1) x (B, T, D)
    stream = torch.stack([s[:, position] for s in streams])  # (L + 1, B, D)
    return parts.head(parts.final_norm(stream)).float()  # (L + 1, B, V)


def token_rank(logits: torch.Tensor, token_id: int) -> torch.Tensor:
    """The rank of one token in each row of logits: 0 for the top token.

    Args:
        logits: (..., V).
        token_id: the token to look up, in [0, V).

    Returns:
        (...) int64 ranks.

    Raises:
        ValueError: token_id is not a whole number in [0, V).

    Introduced in chapter 7.
    """
    token_id = _whole_number(token_id, "token_id")
    vocab_size = logits.size(-1)
    if not 0 <= token_id < vocab_size:
        raise ValueError(
            f"token_id={token_id} is not in the vocabulary of V={vocab_size} tokens "
            f"(ids 0 .. {vocab_size - 1}); take it from the tokenizer of this model"
        )
    target = logits[..., token_id : token_id + 1]  # (..., 1)
    return (logits > target).sum(dim=-1)  # (..., V) -> (...)


def weight_on_keys(
    maps: Sequence[torch.Tensor], key_mask: torch.Tensor
) -> torch.Tensor:
    """The mean attention weight that queries put on a chosen set of keys, per head.

    Args:
        maps: a list of L tensors, each (B, H, T, T), e.g. from `attention_weights`.
        key_mask: (B, T) bool, True at the keys of interest (newlines, say).

    Returns:
        (L, H): the weight on those keys, summed per query, averaged over the
        queries and the batch.

    Raises:
        TypeError: maps is a single tensor, or key_mask is not a bool tensor.
        ValueError: a map is not (B, H, T, T), or key_mask is not (B, T).

    Introduced in chapter 7.
    """
    _check_maps_and_mask(maps, key_mask)
    weights = torch.stack([m.float().cpu() for m in maps])  # (L, B, H, T, T)
    chosen = key_mask.cpu().float()[None, :, None, None, :]  # (1, B, 1, 1, T)
    return (weights * chosen).sum(dim=-1).mean(dim=(1, 3))  # (L, B, H, T) -> (L, H)


def _check_maps_and_mask(maps: Any, key_mask: Any) -> None:
    """Raise a TypeError or ValueError that says how maps or key_mask is wrong."""
    if isinstance(maps, torch.Tensor) or not isinstance(maps, Sequence) or not maps:
        raise TypeError(
            f"maps must be a non-empty list of L tensors (B, H, T, T), got "
            f"{_shape_text(maps)}; for one layer's maps pass [maps]"
        )
    shape = maps[0].shape if isinstance(maps[0], torch.Tensor) else None
    for m in maps:
        if not isinstance(m, torch.Tensor) or m.dim() != 4 or m.shape != shape:
            raise ValueError(
                "every map must be a (B, H, T, T) tensor of the same shape, got "
                f"{[_shape_text(m) for m in maps]}"
            )
    if not isinstance(key_mask, torch.Tensor) or key_mask.dtype != torch.bool:
        raise TypeError(
            "key_mask must be a bool tensor, True at the keys to score, got "
            f"{_shape_text(key_mask)}; build it from the ids, e.g. idx == newline_id"
        )
    batch_size, seq_len = shape[0], shape[-1]
    if key_mask.shape != (batch_size, seq_len):
        raise ValueError(
            f"key_mask must have shape (B, T) = {(batch_size, seq_len)}, the batch "
            f"and keys of the maps, got {tuple(key_mask.shape)}"
        )


def _whole_number(value: Any, name: str) -> int:
    """value as an int: Python, NumPy or 0-d torch integers pass, bools do not."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None


def _shape_text(value: Any) -> str:
    """A tensor as `tensor of shape (2, 3)`, anything else by its type."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _is_1d(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 1

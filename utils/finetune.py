"""Fine-tuning helpers for chapter 8: SMS batches for an encoder classifier, spam
instructions for a chat model with a loss on the answer only, token-weighted gradient
accumulation, two short training loops and accuracy/F1.

Truncation always keeps the beginning of a message and drops its end (the "right"
side): the first words of an SMS usually say what it is about.
"""

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from utils.data import SMSMessage
from utils.prompting import few_shot_messages
from utils.training import lr_at

IGNORE_INDEX = -100  # label of positions without loss; PyTorch's cross_entropy default
SPAM_LABELS = ("ham", "spam")  # class 0 and class 1; spam is the positive class
SPAM_INSTRUCTION = (  # the system message of chapter 1's zero- and few-shot prompts
    "Classify each SMS message as spam or ham (ham means a normal, wanted message). "
    "Answer with one word: spam or ham."
)

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the two short training loops of chapter 8.

    Introduced in chapter 8.
    """

    steps: int = 30  # optimizer steps
    batch_size: int = 32  # examples per optimizer step
    micro_batch_size: int = 0  # examples per forward pass; 0 means batch_size
    lr: float = 5e-5  # peak learning rate, reached after the warm-up
    warmup_steps: int = 3
    weight_decay: float = 0.01
    seed: int = 0  # picks the order of the examples

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.micro_batch_size < 0:
            raise ValueError(
                "steps and batch_size must be >= 1 and micro_batch_size >= 0, got "
                f"{self.steps}, {self.batch_size}, {self.micro_batch_size}"
            )


# --- encoder classification ----------------------------------------------------------


def classifier_batch(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[SMSMessage], max_len: int
) -> Batch:
    """Tokenize messages for an encoder classifier, padded to the longest one.

    Args:
        messages: labelled messages; "ham" becomes class 0, "spam" class 1.
        max_len: at most this many tokens per message, special tokens included;
            longer messages lose their end.

    Returns:
        `input_ids` and `attention_mask` (B, T), `labels` (B,).

    Introduced in chapter 8.
    """
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "right"  # keep the beginning of long messages
    try:
        batch = tokenizer(
            [m.text for m in messages],
            padding=True,
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
        )
    finally:
        tokenizer.truncation_side = side
    labels = torch.tensor([label_id(m.label) for m in messages])  # (B,)
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": labels,
    }


def label_id(label: str) -> int:
    """0 for "ham", 1 for "spam"; anything else is an error.

    Introduced in chapter 8.
    """
    if label not in SPAM_LABELS:
        raise ValueError(f"unknown label {label!r}; expected one of {SPAM_LABELS}")
    return SPAM_LABELS.index(label)


def _batches(n: int, config: TrainConfig) -> list[list[int]]:
    """`config.steps` batches of example indices: seeded epochs, each reshuffled."""
    rng = random.Random(config.seed)
    order: list[int] = []
    while len(order) < config.steps * config.batch_size:
        epoch = list(range(n))
        rng.shuffle(epoch)
        order += epoch
    size = config.batch_size
    return [order[i * size : (i + 1) * size] for i in range(config.steps)]


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter; nothing would change")
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _set_lr(optimizer: torch.optim.Optimizer, step: int, config: TrainConfig) -> None:
    lr = lr_at(
        step,
        max_lr=config.lr,
        min_lr=config.lr / 10,
        warmup_steps=config.warmup_steps,
        total_steps=config.steps,
    )
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_classifier(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[SMSMessage],
    config: TrainConfig,
    max_len: int = 64,
    desc: str = "fine-tuning",
) -> dict[str, list]:
    """Train an `EncoderClassifier` with cross-entropy, AdamW and warm-up + cosine.

    Args:
        model: maps (input_ids, attention_mask) to (B, 2) logits.
        messages: the training messages; batches are drawn by `config.seed`.
        config: steps, batch size, learning rate.
        max_len: token limit per message (see `classifier_batch`).
        desc: label of the progress bar.

    Returns:
        History `{"step": [...], "loss": [...]}`, one entry per step.

    Introduced in chapter 8.
    """
    optimizer = _optimizer(model, config)
    history: dict[str, list] = {"step": [], "loss": []}
    model.train()
    bar = tqdm(_batches(len(messages), config), desc=desc)
    for step, indices in enumerate(bar):
        batch = classifier_batch(tokenizer, [messages[i] for i in indices], max_len)
        _set_lr(optimizer, step, config)
        logits = model(batch["input_ids"], batch["attention_mask"])  # (B, 2)
        loss = F.cross_entropy(logits, batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history["step"].append(step)
        history["loss"].append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    return history


@torch.no_grad()
def predict_classifier(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[SMSMessage],
    max_len: int = 64,
    batch_size: int = 128,
) -> list[str]:
    """Label each message "ham" or "spam" with an encoder classifier in eval mode.

    Messages are sorted by length before batching, so batches carry little
    padding; the labels come back in the input order.

    Introduced in chapter 8.
    """
    model.eval()
    order = sorted(range(len(messages)), key=lambda i: len(messages[i].text))
    predicted = [""] * len(messages)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = classifier_batch(tokenizer, [messages[i] for i in chunk], max_len)
        logits = model(batch["input_ids"], batch["attention_mask"])  # (B, 2)
        for i, c in zip(chunk, logits.argmax(-1).tolist(), strict=True):
            predicted[i] = SPAM_LABELS[c]
    return predicted


def spam_scores(
    predicted: Sequence[str],
    gold: Sequence[str],
    positive: str = "spam",
    labels: Sequence[str] = SPAM_LABELS,
) -> dict[str, float]:
    """Accuracy, and precision, recall and F1 of the `positive` class.

    F1 is the harmonic mean of precision (how many predicted spams are spam) and
    recall (how many spams were found); it is 0 when no spam is found.

    Args:
        predicted, gold: one label per message, each one of `labels`.
        positive: the class whose precision, recall and F1 are computed.
        labels: every label allowed; labels are compared exactly ("Ham" is not
            "ham").

    Returns:
        `{"accuracy", "precision", "recall", "f1"}`.

    Raises:
        ValueError: the lists differ in length or are empty, or hold a label
            outside `labels`.

    Introduced in chapter 8.
    """
    _check_labels(predicted, gold, labels)
    if positive not in labels:
        raise ValueError(f"positive={positive!r} is not one of {tuple(labels)}")
    pairs = list(zip(predicted, gold, strict=True))
    hits = sum(p == positive and g == positive for p, g in pairs)
    claimed = sum(p == positive for p in predicted)
    actual = sum(g == positive for g in gold)
    precision = hits / claimed if claimed else 0.0
    recall = hits / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    accuracy = sum(p == g for p, g in pairs) / len(gold)
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1}


def confusion_counts(
    predicted: Sequence[str], gold: Sequence[str], labels: Sequence[str] = SPAM_LABELS
) -> torch.Tensor:
    """(n_labels, n_labels) counts: row = true label, column = predicted label.

    Raises:
        ValueError: as `spam_scores`.

    Introduced in chapter 8.
    """
    _check_labels(predicted, gold, labels)
    labels = list(labels)
    counts = torch.zeros(len(labels), len(labels), dtype=torch.long)
    for p, g in zip(predicted, gold, strict=True):
        counts[labels.index(g), labels.index(p)] += 1
    return counts


def _check_labels(
    predicted: Sequence[str], gold: Sequence[str], labels: Sequence[str]
) -> None:
    """Equal, non-empty lists whose every entry is one of `labels`."""
    if len(predicted) != len(gold) or not gold:
        raise ValueError(
            f"need two equal, non-empty lists, got {len(predicted)} and {len(gold)}"
        )
    for name, values in (("predicted", predicted), ("gold", gold)):
        unknown = [v for v in dict.fromkeys(values) if v not in labels]
        if unknown:
            raise ValueError(
                f"{name} holds labels that are not among {tuple(labels)}: "
                f"{unknown[:5]}; labels must match exactly (case included), e.g. "
                f"map them first with [label.lower() for label in {name}]"
            )


# --- instruction data for a chat model -----------------------------------------------


@dataclass(frozen=True)
class InstructionExample:
    """One chat-formatted example: prompt tokens, then the answer tokens.

    Introduced in chapter 8.
    """

    input_ids: list[int]  # prompt + answer + end-of-turn token
    prompt_length: int  # tokens before the answer; they get no loss


def truncate_text(
    tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int
) -> str:
    """Keep the first `max_tokens` tokens of `text` (the end is dropped).

    Introduced in chapter 8.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    ids = tokenizer.encode(text, add_special_tokens=False)
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def instruction_example(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    answer: str,
    instruction: str = SPAM_INSTRUCTION,
    max_message_tokens: int = 48,
) -> InstructionExample:
    """Format `text` and its `answer` with the chat template, as chapter 1 prompts.

    The prompt is exactly chapter 1's zero-shot prompt (system instruction, user
    message, assistant header); the answer is the label followed by the end-of-turn
    token, which teaches the model to stop. A message longer than
    `max_message_tokens` keeps its beginning.

    Introduced in chapter 8.
    """
    messages = few_shot_messages(
        instruction, (), truncate_text(tokenizer, text, max_message_tokens)
    )
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True
    )["input_ids"]
    full = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": answer}], return_dict=True
    )["input_ids"]
    if full[: len(prompt)] != prompt:
        raise ValueError(
            "the chat template renders the prompt differently with an answer"
        )
    end = full.index(tokenizer.eos_token_id, len(prompt)) + 1  # keep the end-of-turn
    return InstructionExample(list(full[:end]), len(prompt))


def answer_labels(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor
) -> torch.Tensor:
    """Labels for a loss on the answer only: the token id there, IGNORE_INDEX elsewhere.

    Labels sit at the same positions as the tokens (as in `transformers`); the loss
    shifts them by one. Padding is found from the attention mask, not from the pad
    id: SmolLM2 pads with its end-of-turn token, which is also part of the answer.

    Args:
        input_ids: (B, T) token ids, right-padded.
        attention_mask: (B, T), 1 for real tokens.
        prompt_lengths: (B,) number of prompt tokens of each row.

    Returns:
        (B, T) int64 labels.

    Raises:
        TypeError: an argument is not a tensor.
        ValueError: the shapes do not describe one batch.

    Introduced in chapter 8.
    """
    _check_label_inputs(input_ids, attention_mask, prompt_lengths)
    positions = torch.arange(input_ids.size(1), device=input_ids.device)  # (T,)
    answer = positions[None, :] >= prompt_lengths[:, None]  # (B, T)
    keep = answer & attention_mask.bool()
    return torch.where(keep, input_ids, torch.full_like(input_ids, IGNORE_INDEX))


def _check_label_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor
) -> None:
    args = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "prompt_lengths": prompt_lengths,
    }
    for name, value in args.items():
        if not isinstance(value, torch.Tensor):
            shape = "(B,), one length per row" if name == "prompt_lengths" else "(B, T)"
            raise TypeError(
                f"{name} must be a torch.Tensor of shape {shape}, got "
                f"{type(value).__name__}; wrap it, e.g. torch.tensor({name})"
            )
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            "need input_ids and attention_mask of the same shape (B, T), got "
            f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    if prompt_lengths.shape != input_ids.shape[:1]:
        raise ValueError(
            f"prompt_lengths must be (B,) = ({input_ids.size(0)},), one length per "
            f"row, got shape {tuple(prompt_lengths.shape)}"
        )


def pad_examples(examples: Sequence[InstructionExample], pad_id: int) -> Batch:
    """Right-pad examples into `input_ids`, `attention_mask` and `labels` (B, T).

    Raises:
        ValueError: `examples` is empty.

    Introduced in chapter 8.
    """
    if len(examples) == 0:
        raise ValueError(
            "pad_examples needs at least one InstructionExample, got an empty list"
        )
    length = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[row, : len(e.input_ids)] = 1
    prompts = torch.tensor([e.prompt_length for e in examples])
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": answer_labels(ids, mask, prompts),
    }


# --- loss on answer tokens and gradient accumulation ---------------------------------


def count_targets(labels: torch.Tensor) -> int:
    """How many positions carry a loss: labels after the shift that are not ignored.

    Introduced in chapter 8.
    """
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def lm_loss_sum(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the labelled positions, and their count.

    Computes the full (B, T, V) logits: the plain version, for checking.

    Introduced in chapter 8.
    """
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).logits  # (B, T, V)
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1
    loss = F.cross_entropy(
        logits[:, :-1].flatten(0, 1),  # (B * (T - 1), V)
        targets.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss, count_targets(batch["labels"])


def answer_loss_sum(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """The same sum as `lm_loss_sum`, with the output layer applied only where a
    label is kept: with a 49,152-token vocabulary that saves most of the head's cost.

    Args:
        model: a `transformers` causal LM (or a `peft` wrapper of one).
        batch: `input_ids`, `attention_mask`, `labels` (B, T).

    Returns:
        `(loss_sum, n_targets)`.

    Introduced in chapter 8.
    """
    hidden = model.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state  # (B, T, D)
    targets = batch["labels"][:, 1:]  # (B, T - 1)
    keep = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])  # (N, D) -> (N, V)
    loss = F.cross_entropy(logits, targets[keep], reduction="sum")
    return loss, int(keep.sum())


LossSum = Callable[[nn.Module, Batch], tuple[torch.Tensor, int]]


def accumulate_gradients(
    model: nn.Module, micro_batches: Sequence[Batch], loss_sum: LossSum = lm_loss_sum
) -> float:
    """Backpropagate a token-weighted mean loss over micro-batches of any lengths.

    Every micro-batch's summed loss is divided by the number of target tokens of
    all micro-batches together, so the gradients equal those of one big batch.
    Averaging each micro-batch's own mean instead would over-weight short ones.

    Returns:
        The mean loss per target token, a float.

    Introduced in chapter 8.
    """
    total = sum(count_targets(b["labels"]) for b in micro_batches)
    if total == 0:
        raise ValueError(
            f"no labelled token in the batch; every label is {IGNORE_INDEX}"
        )
    summed = 0.0
    for batch in micro_batches:
        loss, _ = loss_sum(model, batch)
        (loss / total).backward()
        summed += loss.item()
    return summed / total


def train_instructions(
    model: nn.Module,
    examples: Sequence[InstructionExample],
    pad_id: int,
    config: TrainConfig,
    desc: str = "instruction tuning",
) -> dict[str, list]:
    """Train the trainable parameters of a causal LM on the answers of `examples`.

    Each step draws `config.batch_size` examples, sorts them by length and cuts them
    into micro-batches of `config.micro_batch_size` (less padding), accumulating
    token-weighted gradients before one AdamW step.

    Returns:
        History `{"step": [...], "loss": [...]}`.

    Introduced in chapter 8.
    """
    optimizer = _optimizer(model, config)
    history: dict[str, list] = {"step": [], "loss": []}
    micro = config.micro_batch_size or config.batch_size
    model.train()
    bar = tqdm(_batches(len(examples), config), desc=desc)
    for step, indices in enumerate(bar):
        chosen = sorted((examples[i] for i in indices), key=lambda e: len(e.input_ids))
        parts = [
            pad_examples(chosen[i : i + micro], pad_id)
            for i in range(0, len(chosen), micro)
        ]
        _set_lr(optimizer, step, config)
        optimizer.zero_grad(set_to_none=True)
        loss = accumulate_gradients(model, parts, answer_loss_sum)
        optimizer.step()
        history["step"].append(step)
        history["loss"].append(loss)
        bar.set_postfix(loss=f"{loss:.4f}")
    model.eval()
    return history


# --- our LoRA and peft's -------------------------------------------------------------


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every LoRA matrix of `model`, by name ("...q_proj.lora_A").

    Introduced in chapter 8.
    """
    return {
        name: tensor.detach().clone()
        for name, tensor in model.state_dict().items()
        if name.endswith((".lora_A", ".lora_B"))
    }


@torch.no_grad()
def copy_lora_to_peft(
    source: nn.Module | dict[str, torch.Tensor], peft_model: nn.Module
) -> int:
    """Load our LoRA matrices into a `peft` model adapted at the same modules.

    Our `q_proj.lora_A` (r, in) is peft's `q_proj.lora_A["default"].weight`, the
    weight of a bias-free (in -> r) linear layer: the same matrix.

    Args:
        source: a model with `LoRALinear` layers, or its `lora_state`.
        peft_model: the result of `peft.get_peft_model` on the same architecture.

    Returns:
        How many matrices were copied.

    Raises:
        KeyError: a module of ours has no LoRA counterpart in `peft_model`.

    Introduced in chapter 8.
    """
    state = lora_state(source) if isinstance(source, nn.Module) else source
    base = peft_model.get_base_model()
    for name, tensor in state.items():
        module_name, _, matrix = name.rpartition(".")
        target = getattr(base.get_submodule(module_name), matrix, None)
        if target is None or "default" not in target:
            raise KeyError(f"peft has no {matrix} adapter at {module_name}")
        target["default"].weight.copy_(tensor)
    return len(state)

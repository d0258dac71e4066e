"""Tests of `utils.finetune` and `utils.reference.classify`: padding-invariant
classification, truncation sides, the answer-only labels and loss, token-weighted
gradient accumulation, the metrics and the two short training loops."""

import inspect

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_VOCAB

from utils.data import SMSMessage
from utils.finetune import (
    IGNORE_INDEX,
    InstructionExample,
    TrainConfig,
    accumulate_gradients,
    answer_labels,
    answer_loss_sum,
    classifier_batch,
    confusion_counts,
    instruction_example,
    lm_loss_sum,
    pad_examples,
    predict_classifier,
    spam_scores,
    train_classifier,
    train_instructions,
)
from utils.reference.classify import EncoderClassifier, mean_pool
from utils.reference.lora import inject_lora

MESSAGES = [
    SMSMessage("ham", "See you at six, I'll bring the cake."),
    SMSMessage("spam", "WIN a FREE holiday! Text WIN to 80082 now, T&C apply."),
    SMSMessage("ham", "ok"),
    SMSMessage("spam", "URGENT: your mobile number has won 2000 pounds, call 09061"),
]


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from utils.models import load_minilm

    return load_minilm()[1]


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from utils.models import load_smollm2_tokenizer

    return load_smollm2_tokenizer()


def _tiny_bert():
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    return BertModel(config).eval()


def test_mean_pool_ignores_padding():
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = mean_pool(hidden, mask)
    torch.testing.assert_close(pooled[0], hidden[0, :3].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1].mean(0))
    with pytest.raises(ValueError, match="no real token"):
        mean_pool(hidden, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="need hidden"):
        mean_pool(hidden, mask[:, :4])


def test_classifier_logits_ignore_extra_padding():
    model = EncoderClassifier(_tiny_bert(), n_classes=2).eval()
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 7592, 102, 0]])
    mask = (ids != 0).long()
    padded_ids = torch.cat([ids, torch.zeros(2, 6, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 6, dtype=torch.long)], dim=1)
    with torch.no_grad():
        short = model(ids, mask)
        long = model(padded_ids, padded_mask)
    torch.testing.assert_close(long, short, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_minilm_classifier_ignores_padding(minilm):
    encoder, tokenizer = minilm
    torch.manual_seed(0)
    model = EncoderClassifier(encoder, n_classes=2).eval()
    one = tokenizer(["Call now to claim your prize"], return_tensors="pt")
    both = tokenizer(
        ["Call now to claim your prize", "a much longer message " * 8],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        alone = model(one["input_ids"], one["attention_mask"])
        padded = model(both["input_ids"], both["attention_mask"])[:1]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_classifier_batch_truncates_the_end(minilm_tokenizer):
    long = SMSMessage("spam", "start " + "word " * 100 + "finish")
    batch = classifier_batch(minilm_tokenizer, [long, MESSAGES[2]], max_len=16)
    assert batch["input_ids"].shape == (2, 16)
    text = minilm_tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert text.startswith("start") and "finish" not in text
    assert batch["labels"].tolist() == [1, 0]
    assert minilm_tokenizer.truncation_side == "right"  # restored


def test_spam_scores_and_confusion():
    gold = ["spam", "spam", "ham", "ham", "ham"]
    predicted = ["spam", "ham", "spam", "ham", "ham"]
    scores = spam_scores(predicted, gold)
    assert scores["accuracy"] == pytest.approx(0.6)
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(0.5)
    assert spam_scores(["ham"] * 5, gold)["f1"] == 0.0
    assert confusion_counts(predicted, gold).tolist() == [[2, 1], [1, 1]]
    with pytest.raises(ValueError, match="equal, non-empty"):
        spam_scores([], [])


@pytest.mark.parametrize(
    ("predicted", "gold", "match"),
    [
        (["Ham"], ["ham"], r"predicted holds labels .*\['Ham'\]; .*case included"),
        (["ham"], ["SPAM"], r"gold holds labels that are not among \('ham', 'spam'\)"),
        ([0, 1], ["ham", "spam"], r"\[0, 1\]"),
        (["ham"], ["ham", "spam"], "equal, non-empty"),
    ],
)
@pytest.mark.parametrize("metric", [spam_scores, confusion_counts])
def test_metrics_reject_unknown_labels(metric, predicted, gold, match):
    with pytest.raises(ValueError, match=match):
        metric(predicted, gold)


def test_spam_scores_rejects_unknown_positive():
    with pytest.raises(ValueError, match="positive='Spam' is not one of"):
        spam_scores(["ham"], ["ham"], positive="Spam")


def test_ignore_value_shared_by_labels_and_loss():
    default = inspect.signature(F.cross_entropy).parameters["ignore_index"].default
    assert IGNORE_INDEX == default == -100
    batch = pad_examples(
        [InstructionExample([5, 6, 7], 2), InstructionExample([5], 0)], 2
    )
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, 7],
        [5, IGNORE_INDEX, IGNORE_INDEX],
    ]


def test_answer_labels_keep_end_of_turn_equal_to_pad():
    ids = torch.tensor([[5, 6, 7, 2, 2], [5, 6, 8, 9, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    labels = answer_labels(ids, mask, torch.tensor([2, 3]))
    assert labels.tolist() == [[-100, -100, 7, 2, -100], [-100, -100, -100, 9, 2]]


@pytest.mark.parametrize(
    ("prompt_lengths", "error", "match"),
    [
        (
            2,
            TypeError,
            r"prompt_lengths must be a torch.Tensor of shape \(B,\).*got int",
        ),
        ([2, 3], TypeError, r"got list; wrap it, e.g. torch.tensor\(prompt_lengths\)"),
        (torch.tensor([2, 3, 4]), ValueError, r"must be \(B,\) = \(2,\)"),
        (torch.tensor(2), ValueError, r"got shape \(\)"),
    ],
)
def test_answer_labels_rejects_bad_prompt_lengths(prompt_lengths, error, match):
    ids = torch.tensor([[5, 6, 7, 2], [5, 6, 8, 2]])
    with pytest.raises(error, match=match):
        answer_labels(ids, torch.ones_like(ids), prompt_lengths)


def test_answer_labels_rejects_mismatched_mask():
    ids = torch.tensor([[5, 6, 7, 2], [5, 6, 8, 2]])
    with pytest.raises(ValueError, match="same shape"):
        answer_labels(ids, torch.ones(2, 3), torch.tensor([1, 2]))


def test_pad_examples_rejects_empty_list():
    with pytest.raises(ValueError, match="at least one InstructionExample"):
        pad_examples([], pad_id=2)


def test_instruction_example_matches_chapter_1_prompt(smollm2_tokenizer):
    tok = smollm2_tokenizer
    from utils.finetune import SPAM_INSTRUCTION
    from utils.prompting import few_shot_messages

    example = instruction_example(tok, "Free prize! Call now", "spam")
    prompt = tok.apply_chat_template(
        few_shot_messages(SPAM_INSTRUCTION, (), "Free prize! Call now"),
        add_generation_prompt=True,
        return_dict=True,
    )["input_ids"]
    assert example.input_ids[: example.prompt_length] == list(prompt)
    answer = tok.decode(example.input_ids[example.prompt_length :])
    assert answer == "spam<|im_end|>"


def test_instruction_example_truncates_the_end(smollm2_tokenizer):
    text = "alpha " + "filler " * 200 + "omega"
    example = instruction_example(smollm2_tokenizer, text, "ham", max_message_tokens=10)
    decoded = smollm2_tokenizer.decode(example.input_ids)
    assert "alpha" in decoded and "omega" not in decoded
    short = instruction_example(smollm2_tokenizer, "hi", "ham", max_message_tokens=10)
    assert len(example.input_ids) - len(short.input_ids) <= 10


def _lm_batches():
    examples = [
        InstructionExample([3, 4, 5, 6, 7, 8, 9, 10, 11], 6),
        InstructionExample([3, 4, 12, 13], 2),
        InstructionExample([3, 4, 5, 14, 15, 16], 3),
        InstructionExample([3, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27], 5),
    ]
    return pad_examples(examples, pad_id=TINY_VOCAB - 1), examples


def test_lm_loss_matches_transformers(tiny_llama):
    model, _ = tiny_llama
    batch, _ = _lm_batches()
    total, count = lm_loss_sum(model, batch)
    hf = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
    ).loss
    torch.testing.assert_close(total / count, hf)
    fast, fast_count = answer_loss_sum(model, batch)
    assert fast_count == count
    torch.testing.assert_close(fast, total, atol=1e-5, rtol=1e-5)


def test_accumulation_equals_one_big_batch(tiny_llama):
    model, _ = tiny_llama
    big, examples = _lm_batches()
    loss_big = accumulate_gradients(model, [big])
    grads_big = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    parts = [
        pad_examples(examples[:1], TINY_VOCAB - 1),
        pad_examples(examples[1:], TINY_VOCAB - 1),
    ]
    loss_parts = accumulate_gradients(model, parts, answer_loss_sum)
    assert loss_parts == pytest.approx(loss_big, rel=1e-5)
    for p, g in zip(model.parameters(), grads_big, strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-4)


def test_accumulation_rejects_all_ignored(tiny_llama):
    model, _ = tiny_llama
    batch = pad_examples([InstructionExample([3, 4, 5], 3)], TINY_VOCAB - 1)
    with pytest.raises(ValueError, match="no labelled token"):
        accumulate_gradients(model, [batch])


def test_train_instructions_lowers_loss(tiny_llama):
    model, _ = tiny_llama
    _, examples = _lm_batches()
    inject_lora(model, ["q_proj", "v_proj"], rank=4, alpha=8)
    config = TrainConfig(
        steps=12, batch_size=4, micro_batch_size=2, lr=1e-2, warmup_steps=1
    )
    history = train_instructions(model, examples, TINY_VOCAB - 1, config)
    assert len(history["loss"]) == 12
    assert history["loss"][-1] < history["loss"][0]
    assert not model.training


def test_train_classifier_learns_tiny_set(minilm_tokenizer):
    torch.manual_seed(0)
    model = EncoderClassifier(_tiny_bert(), n_classes=2, dropout=0.0)
    config = TrainConfig(steps=25, batch_size=4, lr=3e-3, warmup_steps=2)
    history = train_classifier(model, minilm_tokenizer, MESSAGES, config, max_len=32)
    assert history["loss"][-1] < history["loss"][0]
    predicted = predict_classifier(model, minilm_tokenizer, MESSAGES, max_len=32)
    assert predicted == [m.label for m in MESSAGES]


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="steps and batch_size"):
        TrainConfig(steps=0)

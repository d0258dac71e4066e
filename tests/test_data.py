"""Tests of utils.data: where fetch finds a file, the loaders and the splits.

The fetch tests swap DATASETS entries and the download function for small fake
files, so they never touch the network, the project cache or the real data. The
tests at the end read the real files and run only when LLM_COURSE_DATA_MIRROR is set.
"""

import hashlib
import io
import os
import urllib.error
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from utils import data

SHAKESPEARE = "First Citizen:\nBefore we proceed, hear me speak!!\n" * 20  # 1000 chars
SMS_TSV = "".join(
    f"{'spam' if i % 4 == 0 else 'ham'}\tmessage {i}\twith a tab \n" for i in range(80)
)


def sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """An empty cache and an empty mirror, both inside tmp_path."""
    cache, mirror = tmp_path / "cache", tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setenv("LLM_COURSE_CACHE", str(cache))
    monkeypatch.setenv(data.MIRROR_ENV, str(mirror))
    return cache, mirror


def fake_dataset(monkeypatch, name, payload, zip_member=None, url=None):
    """Replace DATASETS[name] with a spec whose checksum is that of `payload`."""
    spec = data.DatasetSpec(
        name=name,
        filename=f"fake_{name}.txt",
        url=url or f"https://example.invalid/{name}",
        sha256=sha256(payload),
        description="a small fake file for tests",
        license="test only",
        zip_member=zip_member,
    )
    monkeypatch.setitem(data.DATASETS, name, spec)
    return spec


def serve(monkeypatch, payload):
    """Make every download write `payload`; returns the list of URLs fetched."""
    calls = []

    def fake_download(url, dest, progress):
        calls.append(url)
        Path(dest).write_bytes(payload)

    monkeypatch.setattr(data, "_download", fake_download)
    return calls


def go_offline(monkeypatch):
    def no_network(url, dest, progress):
        raise urllib.error.URLError("network is blocked in tests")

    monkeypatch.setattr(data, "_download", no_network)


def test_fetch_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="sms_spam, tinyshakespeare"):
        data.fetch("shakespear")


def test_fetch_uses_mirror_in_place(folders, monkeypatch):
    cache, mirror = folders
    spec = fake_dataset(monkeypatch, "tinyshakespeare", b"to be or not")
    (mirror / spec.filename).write_bytes(b"to be or not")
    go_offline(monkeypatch)

    path = data.fetch("tinyshakespeare")

    assert path == mirror / spec.filename
    assert not (cache / spec.filename).exists()


def test_fetch_skips_mirror_with_bad_checksum(folders, monkeypatch):
    cache, mirror = folders
    spec = fake_dataset(monkeypatch, "tinyshakespeare", b"good text")
    (mirror / spec.filename).write_bytes(b"bad text, longer")
    calls = serve(monkeypatch, b"good text")

    with pytest.warns(UserWarning, match="ignoring .*expected"):
        path = data.fetch("tinyshakespeare", progress=False)

    assert path == cache / spec.filename
    assert path.read_bytes() == b"good text"
    assert calls == [spec.url]


def test_fetch_moves_corrupt_cache_aside_and_redownloads(folders, monkeypatch):
    cache, _ = folders
    spec = fake_dataset(monkeypatch, "tinyshakespeare", b"good text")
    cache.mkdir()
    (cache / spec.filename).write_bytes(b"half a fi")
    calls = serve(monkeypatch, b"good text")

    with pytest.warns(UserWarning, match="moved it to"):
        path = data.fetch("tinyshakespeare", progress=False)

    assert path.read_bytes() == b"good text"
    assert (cache / f"{spec.filename}.corrupt").read_bytes() == b"half a fi"
    assert len(calls) == 1


def test_fetch_uses_good_cache_without_downloading(folders, monkeypatch):
    cache, _ = folders
    spec = fake_dataset(monkeypatch, "sms_spam", b"ham\thello\n")
    cache.mkdir()
    (cache / spec.filename).write_bytes(b"ham\thello\n")
    go_offline(monkeypatch)
    monkeypatch.delenv(data.MIRROR_ENV)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = data.fetch("sms_spam")
        second = data.fetch("sms_spam")

    assert first == second == cache / spec.filename


def test_fetch_hashes_an_unchanged_file_once(folders, monkeypatch):
    cache, _ = folders
    spec = fake_dataset(monkeypatch, "sms_spam", b"ham\thello\n")
    cache.mkdir()
    (cache / spec.filename).write_bytes(b"ham\thello\n")
    go_offline(monkeypatch)

    data.fetch("sms_spam")
    misses = data._file_sha256.cache_info().misses
    for _ in range(3):
        data.fetch("sms_spam")

    assert data._file_sha256.cache_info().misses == misses


def test_fetch_download_with_wrong_checksum_raises_and_keeps_cache(
    folders, monkeypatch
):
    cache, _ = folders
    spec = fake_dataset(monkeypatch, "tinyshakespeare", b"good text")
    cache.mkdir()
    (cache / spec.filename).write_bytes(b"old text")
    serve(monkeypatch, b"an error page")

    with pytest.warns(UserWarning), pytest.raises(ValueError) as info:
        data.fetch("tinyshakespeare", progress=False)

    message = str(info.value)
    assert "checksum mismatch" in message and spec.sha256 in message
    assert sha256(b"an error page") in message
    assert not (cache / spec.filename).exists()
    assert (cache / f"{spec.filename}.corrupt").read_bytes() == b"old text"
    assert sorted(p.name for p in cache.iterdir()) == [f"{spec.filename}.corrupt"]


def test_fetch_offline_without_copy_says_where_to_put_it(folders, monkeypatch):
    cache, _ = folders
    spec = fake_dataset(monkeypatch, "sms_spam", b"ham\thello\n")
    go_offline(monkeypatch)

    with pytest.raises(data.DatasetUnavailableError) as info:
        data.fetch("sms_spam")

    message = str(info.value)
    assert spec.filename in message and spec.url in message
    assert str(cache / spec.filename) in message
    assert data.MIRROR_ENV in message
    assert list(cache.iterdir()) == []


def test_fetch_extracts_zip_member(folders, monkeypatch):
    cache, _ = folders
    member = b"spam\tWIN a prize\nham\tsee you at 5\n"
    spec = fake_dataset(monkeypatch, "sms_spam", member, zip_member="Collection")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("readme.txt", "not this one")
        zipped.writestr("Collection", member)
    serve(monkeypatch, archive.getvalue())

    path = data.fetch("sms_spam", progress=False)

    assert path == cache / spec.filename
    assert path.read_bytes() == member
    assert data.load_sms_spam() == [("spam", "WIN a prize"), ("ham", "see you at 5")]


def test_fetch_zip_without_member_raises(folders, monkeypatch):
    fake_dataset(monkeypatch, "sms_spam", b"ham\thi\n", zip_member="Collection")
    serve(monkeypatch, b"<html>not a zip</html>")

    with pytest.raises(ValueError, match="not a zip archive holding 'Collection'"):
        data.fetch("sms_spam", progress=False)


def test_download_reads_a_file_url(folders, tmp_path, monkeypatch):
    # urllib serves file:// URLs, so the real _download runs without a network
    source = tmp_path / "source.txt"
    source.write_bytes(b"O Romeo, Romeo")
    url = source.as_uri()
    fake_dataset(monkeypatch, "tinyshakespeare", b"O Romeo, Romeo", url=url)

    path = data.fetch("tinyshakespeare", progress=False)

    assert path.read_bytes() == b"O Romeo, Romeo"


def test_load_sms_spam_splits_on_first_tab_only(folders, monkeypatch):
    cache, _ = folders
    spec = fake_dataset(monkeypatch, "sms_spam", SMS_TSV.encode())
    cache.mkdir()
    (cache / spec.filename).write_text(SMS_TSV, encoding="utf-8")

    messages = data.load_sms_spam()

    assert len(messages) == 80
    assert messages[0] == data.SMSMessage("spam", "message 0\twith a tab ")
    assert messages[1].label == "ham"


def test_load_sms_spam_rejects_unknown_label(folders, monkeypatch):
    cache, _ = folders
    spec = fake_dataset(monkeypatch, "sms_spam", b"ham\tok\nmaybe\tno\n")
    cache.mkdir()
    (cache / spec.filename).write_bytes(b"ham\tok\nmaybe\tno\n")

    with pytest.raises(ValueError, match="line 2"):
        data.load_sms_spam()


@pytest.fixture
def fake_sms(folders, monkeypatch):
    """80 fake messages, 20 of them spam, in the cache."""
    cache, _ = folders
    spec = fake_dataset(monkeypatch, "sms_spam", SMS_TSV.encode())
    cache.mkdir()
    (cache / spec.filename).write_text(SMS_TSV, encoding="utf-8")
    return data.load_sms_spam()


def test_sms_spam_splits_deterministic_disjoint_stratified_complete(fake_sms):
    splits = data.sms_spam_splits(seed=3)

    assert splits == data.sms_spam_splits(seed=3)
    assert splits != data.sms_spam_splits(seed=4)
    texts = [m.text for split in ("train", "val", "test") for m in splits[split]]
    assert sorted(texts) == sorted(m.text for m in fake_sms)  # each message once
    counts = {k: Counter(m.label for m in v) for k, v in splits.items()}
    assert counts["train"] == {"ham": 42, "spam": 14}
    assert counts["val"] == {"ham": 6, "spam": 2}
    assert counts["test"] == {"ham": 12, "spam": 4}


def test_sms_spam_splits_keep_file_order(fake_sms):
    order = {m.text: i for i, m in enumerate(fake_sms)}

    for split in data.sms_spam_splits().values():
        positions = [order[m.text] for m in split]
        assert positions == sorted(positions)


@pytest.mark.parametrize(
    "fractions", [(0.8, 0.2, 0.0), (0.7, 0.1, 0.1), (1.2, -0.1, -0.1), (0.5, 0.5)]
)
def test_sms_spam_splits_rejects_bad_fractions(fake_sms, fractions):
    with pytest.raises(ValueError, match="three positive numbers"):
        data.sms_spam_splits(fractions=fractions)


def test_sms_spam_sample_balanced_deterministic_mixed(fake_sms):
    sample = data.sms_spam_sample(4, split="train", seed=1)

    assert sample == data.sms_spam_sample(4, split="train", seed=1)
    assert Counter(m.label for m in sample) == {"ham": 4, "spam": 4}
    assert [m.label for m in sample] != ["ham"] * 4 + ["spam"] * 4
    train = data.sms_spam_splits()["train"]
    assert all(m in train for m in sample)


def test_sms_spam_sample_rejects_impossible_requests(fake_sms):
    with pytest.raises(ValueError, match="only 4 'spam' messages"):
        data.sms_spam_sample(5, split="test")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        data.sms_spam_sample(1, split="dev")
    with pytest.raises(ValueError, match="at least 1"):
        data.sms_spam_sample(0)


def test_shakespeare_splits_sizes(folders, monkeypatch):
    cache, _ = folders
    spec = fake_dataset(monkeypatch, "tinyshakespeare", SHAKESPEARE.encode())
    cache.mkdir()
    (cache / spec.filename).write_text(SHAKESPEARE, encoding="utf-8")

    train, val = data.shakespeare_splits()
    train_q, val_q = data.shakespeare_splits(val_fraction=0.25)

    assert len(SHAKESPEARE) == 1000
    assert (len(train), len(val)) == (900, 100)
    assert (len(train_q), len(val_q)) == (750, 250)
    assert train + val == SHAKESPEARE == train_q + val_q


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.1, 1.5])
def test_shakespeare_splits_rejects_bad_fraction(val_fraction):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        data.shakespeare_splits(val_fraction)


# --- the real files, from the mirror ----------------------------------------------

needs_mirror = pytest.mark.skipif(
    not os.environ.get(data.MIRROR_ENV),
    reason=f"set {data.MIRROR_ENV} to a folder with the real data files",
)


@pytest.fixture
def real_data(tmp_path, monkeypatch):
    """The real DATASETS, read from the mirror only: no cache writes, no network."""
    monkeypatch.setenv("LLM_COURSE_CACHE", str(tmp_path))
    go_offline(monkeypatch)
    mirror = Path(os.environ[data.MIRROR_ENV])
    for spec in data.DATASETS.values():
        assert data.fetch(spec.name).parent == mirror


@needs_mirror
def test_real_shakespeare_length(real_data):
    text = data.load_shakespeare()
    train, val = data.shakespeare_splits()

    assert len(text) == 1_115_394
    assert (len(train), len(val)) == (1_003_854, 111_540)
    assert text.startswith("First Citizen:")


@needs_mirror
def test_real_sms_spam_counts(real_data):
    messages = data.load_sms_spam()

    assert len(messages) == 5_574
    assert Counter(m.label for m in messages) == {"ham": 4_827, "spam": 747}
    assert all("\n" not in m.text and m.text for m in messages)


@needs_mirror
def test_real_sms_spam_split_sizes(real_data):
    splits = data.sms_spam_splits()
    counts = {k: Counter(m.label for m in v) for k, v in splits.items()}

    assert counts["train"] == {"ham": 3_379, "spam": 523}
    assert counts["val"] == {"ham": 483, "spam": 75}
    assert counts["test"] == {"ham": 965, "spam": 149}
    assert len(data.sms_spam_sample(50)) == 100


# --- the character tokenizer ---------------------------------------------------------


def test_char_tokenizer_round_trip():
    tokenizer = data.CharTokenizer.from_text("hello, world\n")

    assert tokenizer.chars == "\n ,dehlorw"
    assert tokenizer.vocab_size == 10
    assert tokenizer.encode("hello") == [5, 4, 6, 6, 7]
    assert tokenizer.decode(tokenizer.encode("low, hello\n")) == "low, hello\n"


def test_char_tokenizer_decodes_a_tensor():
    import torch

    tokenizer = data.CharTokenizer("abc")

    assert tokenizer.decode(torch.tensor([2, 0, 1])) == "cab"


def test_char_tokenizer_rejects_bad_input():
    tokenizer = data.CharTokenizer("abc")

    with pytest.raises(ValueError, match="'z' is not in the vocabulary"):
        tokenizer.encode("abz")
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        tokenizer.decode([0, 3])
    with pytest.raises(ValueError, match="each character once"):
        data.CharTokenizer("abca")


@needs_mirror
def test_real_shakespeare_char_data(real_data):
    import torch

    tokenizer, train, val = data.shakespeare_char_data()
    text = data.load_shakespeare()

    assert tokenizer.vocab_size == 65
    assert tokenizer.chars[:2] == "\n " and len(tokenizer.encode(text)) == len(text)
    assert (train.numel(), val.numel()) == (1_003_854, 111_540)
    assert train.dtype == val.dtype == torch.long
    assert tokenizer.decode(train[:14]) == "First Citizen:"
    assert tokenizer.decode(val[-10:]) == text[-10:]

"""The course's two datasets: find a verified copy, or download and cache one.

`fetch` looks in three places, in order: the mirror folder named by the
`LLM_COURSE_DATA_MIRROR` environment variable, the ignored cache folder
(`utils.paths.cache_dir()`), and finally the file's public source. Every copy is
checked against a known sha256 before it is used. The loaders below turn the files
into Python objects and fixed, seeded splits.
"""

import functools
import hashlib
import http.client
import math
import os
import random
import shutil
import urllib.request
import uuid
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from tqdm.auto import tqdm

from utils.paths import CACHE_ENV, cache_dir

if TYPE_CHECKING:
    import torch

MIRROR_ENV = "LLM_COURSE_DATA_MIRROR"
SMS_LABELS = ("ham", "spam")
SMS_SPLITS = ("train", "val", "test")
_TIMEOUT_S = 60  # per blocking network operation, not for the whole download


@dataclass(frozen=True)
class DatasetSpec:
    """Where one dataset file comes from and how to recognise a good copy.

    Introduced in chapter 1.
    """

    name: str  # the key in DATASETS, e.g. "tinyshakespeare"
    filename: str  # the name of the file in the mirror and in the cache
    url: str  # public source: the file itself, or a zip archive holding it
    sha256: str  # of the file itself (of the extracted member for a zip)
    description: str  # one line: what it is and how big
    license: str
    zip_member: str | None = None  # member of the archive at `url`; None: no zip


DATASETS: dict[str, DatasetSpec] = {
    "tinyshakespeare": DatasetSpec(
        name="tinyshakespeare",
        filename="tinyshakespeare.txt",
        url=(
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/"
            "data/tinyshakespeare/input.txt"
        ),
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        description="Tiny Shakespeare: 1,115,394 characters of plays, UTF-8 text",
        license="public domain",
    ),
    "sms_spam": DatasetSpec(
        name="sms_spam",
        filename="sms_spam_collection.tsv",
        url="https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
        sha256="7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
        description=(
            "SMS Spam Collection (UCI dataset 228): 5,574 'label<TAB>text' lines, "
            "4,827 ham and 747 spam"
        ),
        license="CC BY 4.0",
        zip_member="SMSSpamCollection",
    ),
}


class DatasetUnavailableError(RuntimeError):
    """No verified copy of a dataset is at hand and the download failed.

    The message names the file, its source, and where to put a copy by hand.

    Introduced in chapter 1.
    """


class SMSMessage(NamedTuple):
    """One labelled text message.

    Introduced in chapter 1.
    """

    label: str  # "ham" or "spam"
    text: str


def fetch(name: str, progress: bool = True) -> Path:
    """The path of a verified local copy of dataset `name`, downloading it if needed.

    Tries, in order: the folder named by `LLM_COURSE_DATA_MIRROR` (used in place,
    never copied), the cache folder, then the public source. A copy whose sha256
    differs from the expected one is never used: a bad mirror file is skipped with a
    warning, and a bad cache file is moved aside to `<filename>.corrupt`.

    Args:
        name: a key of `DATASETS`, "tinyshakespeare" or "sms_spam".
        progress: show a progress bar while downloading.

    Returns:
        The path of the file in the mirror folder or in the cache folder.

    Raises:
        ValueError: `name` is unknown, or the downloaded file fails its checksum.
        DatasetUnavailableError: no good copy is at hand and the download failed.

    Introduced in chapter 1.
    """
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}"
        )
    spec = DATASETS[name]

    mirrored = _from_mirror(spec)
    if mirrored is not None:
        return mirrored

    target = cache_dir() / spec.filename
    if _cached_copy_is_good(spec, target):
        return target

    _download_into_cache(spec, target, progress)
    return target


def load_shakespeare() -> str:
    """The whole Tiny Shakespeare text.

    Returns:
        A string of 1,115,394 characters.

    Raises:
        DatasetUnavailableError: offline with no local copy (see `fetch`).

    Introduced in chapter 2.
    """
    return fetch("tinyshakespeare").read_text(encoding="utf-8")


def shakespeare_splits(val_fraction: float = 0.1) -> tuple[str, str]:
    """Split Tiny Shakespeare into a training and a validation text, as nanoGPT does.

    The first `1 - val_fraction` of the characters is the training text and the rest
    is the validation text; nothing is shuffled, so the two never overlap.

    Args:
        val_fraction: the share of characters kept for validation, in (0, 1).

    Returns:
        `(train_text, val_text)`; with the default, 1,003,854 and 111,540 characters.

    Raises:
        ValueError: `val_fraction` is not strictly between 0 and 1.
        DatasetUnavailableError: offline with no local copy (see `fetch`).

    Introduced in chapter 2.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(
            f"val_fraction must be strictly between 0 and 1, got {val_fraction!r}; "
            "0.1 keeps the last 10% of the text for validation"
        )
    text = load_shakespeare()
    n_train = int(len(text) * (1 - val_fraction))
    return text[:n_train], text[n_train:]


def load_sms_spam() -> list[SMSMessage]:
    """All messages of the SMS Spam Collection, in file order.

    Returns:
        5,574 `SMSMessage`s: 4,827 labelled "ham" and 747 labelled "spam".

    Raises:
        ValueError: a line is not `label<TAB>text` with a known label.
        DatasetUnavailableError: offline with no local copy (see `fetch`).

    Introduced in chapter 1.
    """
    return _parse_sms(fetch("sms_spam").read_bytes().decode("utf-8"))


def sms_spam_splits(
    seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
) -> dict[str, list[SMSMessage]]:
    """Split the SMS messages into train, validation and test sets, stratified by label.

    Each label is shuffled with its own `random.Random(seed)` draw and cut by
    `fractions`, so every split has (up to rounding) the same share of spam as the
    whole collection. Within a split the messages keep their file order. With the
    defaults the sizes are 3,902, 558 and 1,114 messages.

    Args:
        seed: picks the shuffle; the same seed always gives the same splits.
        fractions: the shares of (train, val, test), each positive, summing to 1.

    Returns:
        `{"train": [...], "val": [...], "test": [...]}`: disjoint lists that together
        hold every message once.

    Raises:
        ValueError: `fractions` are not three positive numbers that sum to 1.
        DatasetUnavailableError: offline with no local copy (see `fetch`).

    Introduced in chapter 1.
    """
    _check_fractions(fractions)
    messages = load_sms_spam()
    rng = random.Random(seed)
    chosen: dict[str, list[int]] = {split: [] for split in SMS_SPLITS}
    for label in SMS_LABELS:
        indices = [i for i, m in enumerate(messages) if m.label == label]
        rng.shuffle(indices)

        # cut points from cumulative shares, so rounding never loses a message
        n = len(indices)
        cut_train = round(n * fractions[0])
        cut_val = max(cut_train, round(n * (fractions[0] + fractions[1])))
        chosen["train"] += indices[:cut_train]
        chosen["val"] += indices[cut_train:cut_val]
        chosen["test"] += indices[cut_val:]
    return {split: [messages[i] for i in sorted(chosen[split])] for split in chosen}


def sms_spam_sample(
    n_per_class: int, split: str = "test", seed: int = 0
) -> list[SMSMessage]:
    """A balanced sample of labelled messages from one split, in a seeded order.

    The split is the course's fixed one, `sms_spam_splits()` with its defaults, so a
    sample from "test" never overlaps the training set whatever `seed` is. The two
    labels are mixed by a seeded shuffle, so their order is not predictable.

    Args:
        n_per_class: how many "ham" and how many "spam" messages to draw.
        split: "train", "val" or "test".
        seed: picks which messages and their order; the same seed, the same sample.

    Returns:
        `2 * n_per_class` messages, half of each label.

    Raises:
        ValueError: `split` is unknown, `n_per_class` is below 1, or the split holds
            fewer than `n_per_class` messages of a label.
        DatasetUnavailableError: offline with no local copy (see `fetch`).

    Introduced in chapter 1.
    """
    if split not in SMS_SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SMS_SPLITS}")
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be at least 1, got {n_per_class}")
    pool = sms_spam_splits()[split]
    rng = random.Random(seed)
    sample: list[SMSMessage] = []
    for label in SMS_LABELS:
        of_label = [m for m in pool if m.label == label]
        if n_per_class > len(of_label):
            raise ValueError(
                f"the {split!r} split has only {len(of_label)} {label!r} messages, "
                f"cannot draw n_per_class={n_per_class}; ask for fewer or use 'train'"
            )
        sample += rng.sample(of_label, n_per_class)
    rng.shuffle(sample)
    return sample


class CharTokenizer:
    """A character-level tokenizer: one token per distinct character of a text.

    The vocabulary is the sorted set of characters, so ids follow code-point order;
    for Tiny Shakespeare that is 65 symbols, newline (id 0) and space (id 1) first.

    Args:
        chars: the vocabulary, every character once, in id order.

    Raises:
        ValueError: `chars` is empty or repeats a character.

    Introduced in chapter 6.
    """

    def __init__(self, chars: str) -> None:
        if not chars or len(set(chars)) != len(chars):
            raise ValueError(
                f"chars must list each character once, got {len(chars)} characters "
                f"with {len(set(chars))} distinct; build it with "
                "CharTokenizer.from_text(text)"
            )
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The tokenizer whose vocabulary is the sorted set of characters of `text`."""
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        """V, the number of distinct tokens."""
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, one per character.

        Raises:
            ValueError: `text` holds a character outside the vocabulary.
        """
        try:
            return [self._ids[c] for c in text]
        except KeyError as err:
            raise ValueError(
                f"character {err.args[0]!r} is not in the vocabulary of "
                f"{self.vocab_size} characters; this tokenizer knows only the "
                "characters of the text it was built from"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """The text of token ids: a list of ints, or a 1-D tensor (T,).

        Raises:
            ValueError: an id is outside [0, vocab_size).
        """
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}), got {bad[:5]}; "
                "were they made by another tokenizer?"
            )
        return "".join(self.chars[i] for i in ids)


class CharData(NamedTuple):
    """Tiny Shakespeare as character tokens, split for training.

    Introduced in chapter 6.
    """

    tokenizer: CharTokenizer
    train: "torch.Tensor"  # (N_train,) int64 token ids, the first 90 % of the text
    val: "torch.Tensor"  # (N_val,) int64 token ids, the last 10 %


def shakespeare_char_data(val_fraction: float = 0.1) -> CharData:
    """Tiny Shakespeare encoded one token per character, split as nanoGPT does.

    The vocabulary comes from the whole text; the first `1 - val_fraction` of the
    token stream is for training and the rest for validation (no shuffling).

    Args:
        val_fraction: the share of tokens kept for validation, in (0, 1).

    Returns:
        `CharData(tokenizer, train, val)`; with the default, a 65-symbol tokenizer
        and 1,003,854 training and 111,540 validation tokens.

    Raises:
        ValueError: `val_fraction` is not strictly between 0 and 1.
        DatasetUnavailableError: offline with no local copy (see `fetch`).

    Introduced in chapter 6.
    """
    import torch  # here, so that the rest of the module works without torch

    train_text, val_text = shakespeare_splits(val_fraction)
    tokenizer = CharTokenizer.from_text(train_text + val_text)
    train = torch.tensor(tokenizer.encode(train_text), dtype=torch.long)
    val = torch.tensor(tokenizer.encode(val_text), dtype=torch.long)
    return CharData(tokenizer, train, val)


# --- finding a verified copy ---------------------------------------------------------


def _from_mirror(spec: DatasetSpec) -> Path | None:
    """The mirror's copy of `spec` if the mirror is set and its copy is good."""
    folder = os.environ.get(MIRROR_ENV)
    if not folder:
        return None
    path = Path(folder).expanduser() / spec.filename
    if not path.is_file():
        return None
    got = _sha256(path)
    if got == spec.sha256:
        return path
    warnings.warn(
        f"ignoring {path} from {MIRROR_ENV}: sha256 is {got}, expected {spec.sha256}",
        stacklevel=3,
    )
    return None


def _cached_copy_is_good(spec: DatasetSpec, target: Path) -> bool:
    """True if `target` holds a good copy; a bad one is moved to `<name>.corrupt`."""
    if not target.is_file():
        return False
    got = _sha256(target)
    if got == spec.sha256:
        return True
    aside = target.with_name(target.name + ".corrupt")
    os.replace(target, aside)
    warnings.warn(
        f"cached {target} has sha256 {got}, expected {spec.sha256}; "
        f"moved it to {aside} and downloading a fresh copy",
        stacklevel=3,
    )
    return False


def _sha256(path: Path) -> str:
    """Hex sha256 of a file, computed once per process for each version of it."""
    stat = path.stat()
    return _file_sha256(
        str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns
    )


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, inode: int, size: int, mtime_ns: int) -> str:
    # inode, size and mtime are part of the key so that a changed file is hashed again
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


# --- downloading ---------------------------------------------------------------------


def _download_into_cache(spec: DatasetSpec, target: Path, progress: bool) -> None:
    """Download, verify and atomically move `spec`'s file to `target`."""
    # temporary files live next to the target, so os.replace never crosses devices
    parts = [_temp_path(target, ".part"), _temp_path(target, ".member")]
    try:
        try:
            _download(spec.url, parts[0], progress)
        except (OSError, http.client.HTTPException) as err:
            # URLError, HTTPError and TimeoutError are all OSErrors
            raise DatasetUnavailableError(_offline_message(spec, target, err)) from None
        ready = parts[0]
        if spec.zip_member is not None:
            _extract_member(spec, parts[0], parts[1], target)
            ready = parts[1]
        got = _sha256(ready)
        if got != spec.sha256:
            raise ValueError(
                f"checksum mismatch for {spec.filename} downloaded from {spec.url}: "
                f"expected sha256 {spec.sha256}, got {got}. The download may be "
                "incomplete or the source may have changed; try again, or put a "
                f"verified copy at {target} or in a folder named by {MIRROR_ENV}"
            )
        os.replace(ready, target)
    finally:
        for part in parts:
            part.unlink(missing_ok=True)


def _download(url: str, dest: Path, progress: bool) -> None:
    """Write the bytes at `url` to `dest`, with a tqdm bar if `progress`."""
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        label = url.rsplit("/", 1)[-1]
        with (
            open(dest, "wb") as out,
            tqdm(
                total=total, unit="B", unit_scale=True, desc=label, disable=not progress
            ) as bar,
        ):
            while chunk := response.read(1 << 16):
                out.write(chunk)
                bar.update(len(chunk))


def _extract_member(spec: DatasetSpec, archive: Path, dest: Path, target: Path) -> None:
    """Copy member `spec.zip_member` of the zip file `archive` to `dest`."""
    try:
        with zipfile.ZipFile(archive) as zipped, zipped.open(spec.zip_member) as src:
            with open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
    except (zipfile.BadZipFile, KeyError) as err:
        raise ValueError(
            f"the download from {spec.url} is not a zip archive holding "
            f"{spec.zip_member!r} ({err}); try again, or extract that member by hand "
            f"and save it as {target}"
        ) from err


def _temp_path(target: Path, suffix: str) -> Path:
    """An unused name next to `target`, so that umask sets its permissions."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}{suffix}")


def _offline_message(spec: DatasetSpec, target: Path, err: BaseException) -> str:
    """What failed and where to put a hand-downloaded copy of `spec`'s file."""
    how = f"download {spec.url}"
    if spec.zip_member is not None:
        how += f", extract the member {spec.zip_member!r} from the zip"
    mirror = os.environ.get(MIRROR_ENV)
    mirror_note = (
        f" (the mirror {mirror} from {MIRROR_ENV} holds no good copy)" if mirror else ""
    )
    return (
        f"could not download {spec.filename} from {spec.url}: {err}{mirror_note}. "
        f"To work offline, {how} and save it as {target} (sha256 {spec.sha256}), "
        f"or set {MIRROR_ENV} to a folder that holds {spec.filename}. "
        f"The cache folder can be moved with {CACHE_ENV}."
    )


def _parse_sms(text: str) -> list[SMSMessage]:
    """Messages from `label<TAB>text` lines; the text may itself hold tabs."""
    messages = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        label, tab, body = line.partition("\t")
        if not tab or label not in SMS_LABELS:
            raise ValueError(
                f"line {line_no} of the SMS file is not 'ham<TAB>text' or "
                f"'spam<TAB>text': {line[:60]!r}; delete the cached file to refetch it"
            )
        messages.append(SMSMessage(label, body))
    return messages


def _check_fractions(fractions: tuple[float, float, float]) -> None:
    """Raise ValueError unless `fractions` are three positive shares summing to 1."""
    if (
        len(fractions) != 3
        or any(f <= 0 for f in fractions)
        or not math.isclose(sum(fractions), 1.0, abs_tol=1e-9)
    ):
        raise ValueError(
            "fractions must be three positive numbers (train, val, test) that sum "
            f"to 1, got {tuple(fractions)}; for example (0.7, 0.1, 0.2)"
        )

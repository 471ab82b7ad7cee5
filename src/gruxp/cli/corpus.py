"""Text for the character-level language model: reading, the vocabulary, the split, baselines.

The default corpus needs no network: the Python standard library's own source files, found via
``sysconfig`` (its ``site-packages`` excluded), a deterministic selection of files up to a size
budget. Every 20th file is held out for validation, so validation text is unseen code.
"""

from __future__ import annotations

import math
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEXT_SUFFIXES = {".py", ".txt", ".md", ".rst", ".c", ".h", ".json", ".toml", ".cfg", ".ini", ".csv", ".html", ".js"}
UNKNOWN = "\ufffd"  # stands for characters outside the vocabulary
MAX_VOCAB = 256


class CorpusError(ValueError):
    """The data cannot be used: missing, unreadable, empty or too short."""


@dataclass
class Corpus:
    train: np.ndarray  # int64 ids
    valid: np.ndarray
    vocab: list[str]
    source: str

    @property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.vocab)}

    def unigram_bits(self) -> float:
        """Bits per character of the validation text under the training text's unigram frequencies."""
        counts = np.bincount(self.train, minlength=len(self.vocab)).astype(np.float64) + 1.0  # add-one
        logp = np.log2(counts / counts.sum())
        return float(-logp[self.valid].mean())


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in sorted(root.rglob("*.py")) if not {"site-packages", "dist-packages"} & set(p.parts)]
    if not files:
        raise CorpusError(f"no Python sources found under the standard library at {root}")
    return files


MAX_FILE_BYTES = 64 << 20  # what is read of any one file: a huge file is cut, never read whole


def _read(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """A regular file's text (UTF-8, else Latin-1), at most ``limit`` bytes of it.

    Only regular files are opened: a FIFO would block forever and /dev/zero never ends.
    """
    if not path.is_file():
        raise CorpusError(f"{str(path)!r} is not a regular file")
    with path.open("rb") as f:
        raw = f.read(limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _files(data: str | None) -> tuple[list[Path], str]:
    """The files that ``--data`` names (one regular file, or a folder's text files) and a description."""
    if data is None:
        return stdlib_files(), f"Python {sysconfig.get_python_version()} standard library sources"
    if not isinstance(data, str) or not data.strip():
        raise CorpusError("data path is empty: name a text file or a folder")
    path = Path(data)
    if not path.exists():
        raise CorpusError(f"data path {data!r} does not exist")
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.suffix.lower() in TEXT_SUFFIXES and p.is_file()]
        if not files:
            raise CorpusError(f"folder {data!r} holds no text files ({', '.join(sorted(TEXT_SUFFIXES))})")
        return files, str(path)
    if not path.is_file():
        raise CorpusError(f"data path {data!r} is neither a regular file nor a folder (a device, FIFO or socket)")
    return [path], str(path)


BINARY_PROBE = 8000  # bytes looked at for a NUL, as git decides that a file is binary


def _read_one(path: Path) -> str:
    """The text of the one file ``--data`` names; a binary file (a NUL byte in its first 8000) is refused."""
    try:
        text = _read(path)
    except OSError as exc:
        raise CorpusError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc
    if "\x00" in text[:BINARY_PROBE]:
        raise CorpusError(f"{str(path)!r} is not a text file (it holds NUL bytes, as binaries do): name a text file or a folder")
    return text


def read_whole(data: str, *, budget: int = 6_000_000) -> tuple[str, str]:
    """(text, description): a file exactly as it is (up to MAX_FILE_BYTES), or a folder's text
    files joined by newlines (up to ``budget`` characters), for scoring."""
    files, source = _files(data)
    if len(files) == 1:
        return _read_one(files[0]), source
    texts, size = [], 0
    for f in files:
        try:
            texts.append(_read(f))
        except (OSError, CorpusError):
            continue  # an unreadable file inside a folder is skipped
        size += len(texts[-1])
        if size >= budget:
            break
    return "\n".join(texts), source


def read_paths(data: str | None, *, budget: int = 6_000_000) -> tuple[list[str], list[str], str]:
    """(training texts, validation texts, description) from a file, a folder, or the stdlib."""
    files, source = _files(data)
    if len(files) == 1:
        text = _read_one(files[0])
        cut = int(len(text) * 0.95)
        return [text[:cut]], [text[cut:]], source
    stride = max(1, len(files) // max(1, budget // 20_000))  # an even spread when there is more than the budget
    train: list[str] = []
    valid: list[str] = []
    size = 0
    for i, f in enumerate(files[::stride]):
        try:
            text = _read(f)
        except (OSError, CorpusError):
            continue  # an unreadable file inside a folder is skipped
        (valid if i % 20 == 19 else train).append(text)
        size += len(text)
        if size >= budget:
            break
    return train, valid, source


def build(data: str | None, *, budget: int = 6_000_000, vocab: list[str] | None = None) -> Corpus:
    train_texts, valid_texts, source = read_paths(data, budget=budget)
    train_text, valid_text = "\n".join(train_texts), "\n".join(valid_texts)
    if not train_text.strip():
        total = sum(len(t) for t in (*train_texts, *valid_texts))
        if not (train_text + valid_text).strip():
            raise CorpusError(f"the corpus {source!r} is empty" + (f" (only {total} whitespace characters)" if total else ""))
        raise CorpusError(
            f"the corpus {source!r} holds only {total} character(s): too short to train on "
            "(95% of it is the training text, 5% the validation text)"
        )
    if vocab is None:
        common = [c for c, _ in Counter(train_text).most_common(MAX_VOCAB - 1)]
        vocab = sorted(common) + [UNKNOWN]
    index = {c: i for i, c in enumerate(vocab)}
    unk = index.get(UNKNOWN, len(vocab) - 1)
    encode = lambda s: np.fromiter((index.get(c, unk) for c in s), dtype=np.int64, count=len(s))  # noqa: E731
    if not valid_text:
        cut = int(len(train_text) * 0.95)
        train_text, valid_text = train_text[:cut], train_text[cut:]
    return Corpus(encode(train_text), encode(valid_text), list(vocab), source)


def encode_text(text: str, vocab: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(vocab)}
    unk = index.get(UNKNOWN, len(vocab) - 1)
    return np.fromiter((index.get(c, unk) for c in text), dtype=np.int64, count=len(text))


def bits(nats: float) -> float:
    return nats / math.log(2)

"""Text for the character-level language model: reading, the vocabulary, the split, baselines.

The default corpus needs no network: the Python standard library's own source files, found via
``sysconfig`` (its ``site-packages`` excluded), a deterministic selection of files up to a size
budget. Every 20th file is held out for validation, so validation text is unseen code.
"""

from __future__ import annotations

import codecs
import math
import sysconfig
from collections import Counter
from dataclasses import dataclass, field
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
    notes: list[str] = field(default_factory=list)  # how it was read: encoding, cuts, files skipped

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


BINARY_PROBE = 8000  # bytes looked at for a NUL, as git decides that a file is binary
MAX_FILE_BYTES = 64 << 20  # what is read of any one file by default: a huge file is cut, never read whole
ENCODING_HINT = "--encoding latin-1, cp1252 or utf-16, say, if the file is in another encoding"
BOMS = (  # a byte-order mark names its encoding (UTF-32's first: its little-endian mark starts as UTF-16's)
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


@dataclass(frozen=True)
class Text:
    """A file's text as the user reads it: decoded strictly, cut only on a character boundary."""

    text: str
    encoding: str  # the codec that decoded it (a BOM's, or the one asked for)
    size: int  # the file's size in bytes
    read: int  # bytes decoded (< size when the file was cut at the cap)

    @property
    def cut(self) -> bool:
        return self.read < self.size


def _encoding(head: bytes, asked: str | None) -> str:
    """The codec: a byte-order mark's, else the one asked for (default UTF-8)."""
    if asked is not None:
        return asked
    return next((name for bom, name in BOMS if head.startswith(bom)), "utf-8")


def check_encoding(name: str | None) -> str | None:
    """``name`` if Python has a text codec by that name (None: the default), else a CorpusError."""
    if name is None:
        return None
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise CorpusError(f"--encoding {name!r} is not an encoding Python knows (e.g. utf-8, latin-1, cp1252, utf-16)") from None
    if not getattr(info, "_is_text_encoding", True):
        raise CorpusError(f"--encoding {name!r} is not a text encoding")
    return info.name


def _read(path: Path, limit: int = MAX_FILE_BYTES, encoding: str | None = None) -> Text:
    """A regular file's text, decoded strictly (UTF-8 unless a byte-order mark or ``encoding`` says
    otherwise), at most ``limit`` bytes of it, cut on a character boundary.

    Only regular files are opened: a FIFO would block forever and /dev/zero never ends. A byte that
    the codec cannot decode raises a CorpusError naming its offset; nothing is decoded otherwise
    than the user would read it. Without an encoding or a byte-order mark, a NUL byte in the first
    8000 means a binary file (as git decides), also refused.
    """
    if not path.is_file():
        raise CorpusError(f"{str(path)!r} is not a regular file")
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(limit)
    codec = _encoding(raw[:4], encoding)
    if encoding is None and codec == "utf-8" and b"\x00" in raw[:BINARY_PROBE]:
        raise CorpusError(
            f"{str(path)!r} is not a text file (it holds NUL bytes, as binaries do): name a text file or a folder "
            "(a UTF-16 file without a byte-order mark: pass --encoding utf-16)"
        )
    decoder = codecs.getincrementaldecoder(codec)("strict")
    try:
        # final only when the whole file was read: a cut keeps the bytes of a split character back
        text = decoder.decode(raw, final=len(raw) >= size)
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"{str(path)!r} is not valid {codec} text: byte {exc.start:,} ({raw[exc.start : exc.start + 1]!r}) "
            f"cannot be decoded ({exc.reason}); pass {ENCODING_HINT}"
        ) from None
    pending = len(decoder.getstate()[0])
    return Text(text, codec, size, len(raw) - pending)


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


def _read_one(path: Path, *, encoding: str | None, max_bytes: int) -> Text:
    """The text of the one file ``--data`` names (a binary one is refused by :func:`_read`)."""
    try:
        return _read(path, max_bytes, encoding)
    except OSError as exc:
        raise CorpusError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc


def _describe(texts: list[Text], skipped: list[str], encoding: str | None, max_bytes: int) -> list[str]:
    """What a user should know of how the files were read: their encoding, cuts, files left out."""
    notes = [", ".join(sorted({t.encoding for t in texts})) or (encoding or "utf-8")]
    cut = [t for t in texts if t.cut]
    if len(texts) == 1 and cut:
        t = cut[0]
        notes.append(
            f"the first {t.read:,} of its {t.size:,} bytes (cut at --max-bytes {max_bytes:,}, on a character boundary; "
            "raise --max-bytes to read more)"
        )
    elif cut:
        notes.append(f"{len(cut)} file(s) cut at --max-bytes {max_bytes:,}, on a character boundary")
    if skipped:
        notes.append(f"{len(skipped)} file(s) skipped, not readable as {encoding or 'utf-8'} (first: {skipped[0]})")
    return notes


def read_whole(
    data: str, *, budget: int = 6_000_000, encoding: str | None = None, max_bytes: int = MAX_FILE_BYTES
) -> tuple[str, str]:
    """(text, description): a file exactly as it is (up to ``max_bytes``), or a folder's text files
    joined by newlines (up to ``budget`` characters), for scoring."""
    files, source = _files(data)
    if len(files) == 1:
        one = _read_one(files[0], encoding=encoding, max_bytes=max_bytes)
        return one.text, f"{source} ({'; '.join(_describe([one], [], encoding, max_bytes))})"
    texts, skipped, size = [], [], 0
    for f in files:
        try:
            texts.append(_read(f, max_bytes, encoding))
        except (OSError, CorpusError):
            skipped.append(str(f))  # an unreadable file inside a folder is skipped, and counted
            continue
        size += len(texts[-1].text)
        if size >= budget:
            break
    return "\n".join(t.text for t in texts), f"{source} ({'; '.join(_describe(texts, skipped, encoding, max_bytes))})"


def read_paths(
    data: str | None, *, budget: int = 6_000_000, encoding: str | None = None, max_bytes: int = MAX_FILE_BYTES
) -> tuple[list[str], list[str], str, list[str]]:
    """(training texts, validation texts, description, notes) from a file, a folder, or the stdlib."""
    files, source = _files(data)
    if len(files) == 1:
        one = _read_one(files[0], encoding=encoding, max_bytes=max_bytes)
        cut = int(len(one.text) * 0.95)
        return [one.text[:cut]], [one.text[cut:]], source, _describe([one], [], encoding, max_bytes)
    stride = max(1, len(files) // max(1, budget // 20_000))  # an even spread when there is more than the budget
    train: list[str] = []
    valid: list[str] = []
    read: list[Text] = []
    skipped: list[str] = []
    size = 0
    for i, f in enumerate(files[::stride]):
        try:
            text = _read(f, max_bytes, encoding)
        except (OSError, CorpusError):
            skipped.append(str(f))  # an unreadable file inside a folder is skipped, and counted
            continue
        read.append(text)
        (valid if i % 20 == 19 else train).append(text.text)
        size += len(text.text)
        if size >= budget:
            break
    return train, valid, source, _describe(read, skipped, encoding, max_bytes)


def build(
    data: str | None,
    *,
    budget: int = 6_000_000,
    vocab: list[str] | None = None,
    encoding: str | None = None,
    max_bytes: int = MAX_FILE_BYTES,
) -> Corpus:
    """The corpus of ``data``: read strictly in ``encoding`` (default UTF-8, or a byte-order mark's),
    each file cut at ``max_bytes`` on a character boundary; ``Corpus.notes`` says how it was read."""
    encoding = check_encoding(encoding)
    train_texts, valid_texts, source, notes = read_paths(data, budget=budget, encoding=encoding, max_bytes=max_bytes)
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
    return Corpus(encode(train_text), encode(valid_text), list(vocab), source, notes)


def encode_text(text: str, vocab: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(vocab)}
    unk = index.get(UNKNOWN, len(vocab) - 1)
    return np.fromiter((index.get(c, unk) for c in text), dtype=np.int64, count=len(text))


def bits(nats: float) -> float:
    return nats / math.log(2)

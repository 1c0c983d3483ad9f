"""A real-text corpus that needs no download: the Python standard library's own source files.

Every Python installation carries a few megabytes of English prose (docstrings, comments) and code
written by hundreds of people, none of them us. We take the top-level ``*.py`` files of the running
Python's standard library (``sysconfig.get_paths()['stdlib']``), sorted by name, skip the one that
the build generates (``_sysconfigdata_*``: it holds the build machine's paths), and concatenate
their bytes. Files go to training or validation whole, by their position in the sorted list, so no
file is seen in both.

The results shipped in ``data/results/`` were made from CPython 3.11.7; ``SHIPPED`` records the
SHA-256 of the exact bytes. Other Python versions give other bytes (patch releases fix bugs in the
standard library), so :func:`load_corpus` checks the hash and says clearly when it differs.
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from gqa_lib.core.checks import check_positive_int

# What the shipped results were made from (CPython 3.11.7, Linux).
SHIPPED = {
    "python": "3.11.7",
    "n_files": 167,
    "sha256": "0ca7c7e0234e8b29f230c7c0cde309010ea0fe843a94a5871557ff89948a2296",
}
VALIDATION_EVERY = 10  # file k of the sorted list is a validation file when k % 10 == 5


class CorpusMismatchError(RuntimeError):
    """The standard library on this machine is not the one the shipped results were made from."""


@dataclass(frozen=True)
class Corpus:
    """The corpus as bytes, split by file. ``train`` and ``val`` are 1-D uint8 tensors (byte tokens)."""

    root: str
    files: tuple[str, ...]  # names in the order used, relative to root
    val_files: tuple[str, ...]
    sha256: str  # of all files' bytes, concatenated in ``files`` order
    python: str
    matches_shipped: bool
    train: torch.Tensor  # (n_train_bytes,) uint8
    val: torch.Tensor  # (n_val_bytes,) uint8

    def describe(self) -> str:
        return (f"{len(self.files)} top-level .py files of the Python {self.python} standard library; "
                f"{len(self.files) - len(self.val_files)} for training ({len(self.train):,} bytes), "
                f"{len(self.val_files)} for validation ({len(self.val):,} bytes); SHA-256 {self.sha256[:16]}...")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(root: str | Path | None = None) -> list[Path]:
    """The files of the corpus in their fixed order: top-level ``*.py`` of ``root``, sorted by name."""
    root = stdlib_root() if root is None else Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root={str(root)!r} is not a folder; expected the standard library's folder")
    files = sorted((p for p in root.glob("*.py") if not p.name.startswith("_sysconfigdata")), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"root={str(root)!r} holds no .py files; expected the standard library's folder")
    return files


def is_validation_file(index: int) -> bool:
    """Whether file ``index`` of the sorted list is held out (every tenth file, starting with the sixth)."""
    return index % VALIDATION_EVERY == VALIDATION_EVERY // 2


def load_corpus(root: str | Path | None = None, strict: bool = True, expected_sha256: str | None = None) -> Corpus:
    """Read the corpus and check its SHA-256 against the bytes the shipped results were made from.

    ``strict=True`` raises :class:`CorpusMismatchError` on a different hash (so a full run that is
    meant to reproduce the shipped CSV cannot silently use other text); ``strict=False`` returns the
    corpus anyway with ``matches_shipped=False`` (good enough to learn from, not to compare numbers).
    """
    files = corpus_files(root)
    expected = SHIPPED["sha256"] if expected_sha256 is None else expected_sha256
    h = hashlib.sha256()
    train_parts, val_parts, val_names = [], [], []
    for i, path in enumerate(files):
        data = path.read_bytes()
        h.update(data)
        if is_validation_file(i):
            val_parts.append(data)
            val_names.append(path.name)
        else:
            train_parts.append(data)
    digest = h.hexdigest()
    matches = digest == expected
    if strict and not matches:
        raise CorpusMismatchError(
            f"the corpus read from {files[0].parent} ({len(files)} files, Python {platform.python_version()}) has "
            f"SHA-256 {digest[:16]}..., but the shipped results were made from {SHIPPED['n_files']} files of "
            f"Python {SHIPPED['python']} with SHA-256 {expected[:16]}...; numbers will differ from "
            "data/results/. Pass strict=False (or --allow-other-corpus) to use this text anyway.")
    return Corpus(root=str(files[0].parent), files=tuple(p.name for p in files), val_files=tuple(val_names),
                  sha256=digest, python=platform.python_version(), matches_shipped=matches,
                  train=_as_tokens(b"".join(train_parts)), val=_as_tokens(b"".join(val_parts)))


def _as_tokens(data: bytes) -> torch.Tensor:
    if not data:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)  # (n_bytes,): one token a byte


def sample_batch(tokens: torch.Tensor, batch: int, seq_len: int, generator: torch.Generator):
    """Random windows of ``tokens``: inputs and next-byte targets, both (batch, seq_len) int64.

    The windows depend only on ``generator``'s state, so two runs that start from the same seed
    see the same batches in the same order, whatever model they train.
    """
    check_positive_int("batch", batch)
    check_positive_int("seq_len", seq_len)
    if len(tokens) <= seq_len + 1:
        raise ValueError(f"seq_len={seq_len} needs more than {seq_len + 1} tokens; got {len(tokens)}")
    starts = torch.randint(0, len(tokens) - seq_len - 1, (batch,), generator=generator)
    idx = starts[:, None] + torch.arange(seq_len + 1)  # (batch, seq_len + 1)
    chunk = tokens[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


def fixed_windows(tokens: torch.Tensor, n_windows: int, seq_len: int):
    """``n_windows`` evenly spaced windows (inputs, targets), the same on every call: the validation set."""
    check_positive_int("n_windows", n_windows)
    check_positive_int("seq_len", seq_len)
    usable = len(tokens) - seq_len - 1
    if usable < n_windows:
        raise ValueError(f"n_windows={n_windows} windows of seq_len={seq_len} need more than "
                         f"{n_windows + seq_len} tokens; got {len(tokens)}")
    starts = torch.linspace(0, usable, n_windows).long()
    idx = starts[:, None] + torch.arange(seq_len + 1)  # (n_windows, seq_len + 1)
    chunk = tokens[idx].long()
    return chunk[:, :-1], chunk[:, 1:]

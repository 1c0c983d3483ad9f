"""The standard-library corpus: a fixed file order, a whole-file split, and a hash check that speaks up."""

import hashlib

import pytest
import torch

from gqa_lib.experiments.corpus import (
    SHIPPED,
    CorpusMismatchError,
    corpus_files,
    fixed_windows,
    is_validation_file,
    load_corpus,
    sample_batch,
)

NAMES = "abcdefghijkl"  # twelve files: file 5 ("f.py") is the one held out


@pytest.fixture
def tiny_stdlib(tmp_path):
    """A stand-in standard library: twelve .py files written out of order, a build-specific one, a .txt."""
    for name in reversed(NAMES):
        (tmp_path / f"{name}.py").write_text(name * 3 + "\n")
    (tmp_path / "_sysconfigdata__linux.py").write_text("build paths\n")
    (tmp_path / "notes.txt").write_text("not code\n")
    return tmp_path


def all_bytes(names=NAMES) -> bytes:
    return b"".join(n.encode() * 3 + b"\n" for n in names)


def test_files_are_sorted_and_skip_build_specific_ones(tiny_stdlib):
    assert [p.name for p in corpus_files(tiny_stdlib)] == [f"{n}.py" for n in NAMES]


def test_hash_covers_exact_bytes_in_order(tiny_stdlib):
    want = hashlib.sha256(all_bytes()).hexdigest()
    corpus = load_corpus(tiny_stdlib, expected_sha256=want)
    assert corpus.sha256 == want and corpus.matches_shipped


def test_different_bytes_raise_a_clear_error_unless_not_strict(tiny_stdlib):
    with pytest.raises(CorpusMismatchError, match=r"SHA-256 .* shipped results were made from .*strict=False"):
        load_corpus(tiny_stdlib)
    corpus = load_corpus(tiny_stdlib, strict=False)
    assert not corpus.matches_shipped
    (tiny_stdlib / "a.py").write_text("changed\n")
    with pytest.raises(CorpusMismatchError):
        load_corpus(tiny_stdlib, expected_sha256=hashlib.sha256(all_bytes()).hexdigest())


def test_split_is_by_whole_file(tiny_stdlib):
    corpus = load_corpus(tiny_stdlib, strict=False)
    assert corpus.val_files == ("f.py",)
    assert bytes(corpus.val.tolist()) == b"fff\n"
    assert bytes(corpus.train.tolist()) == all_bytes(NAMES.replace("f", ""))


def test_missing_folder_names_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="root="):
        corpus_files(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no .py files"):
        corpus_files(tmp_path)


def test_this_python_gives_the_shipped_corpus():
    corpus = load_corpus(strict=False)
    if not corpus.matches_shipped:
        pytest.skip(f"this Python's standard library differs from the shipped one ({SHIPPED['python']})")
    assert len(corpus.files) == SHIPPED["n_files"]
    assert not set(corpus.val_files) & (set(corpus.files) - set(corpus.val_files))
    assert len(corpus.val_files) == sum(is_validation_file(i) for i in range(len(corpus.files)))


def test_batches_depend_only_on_the_seed():
    tokens = torch.arange(1000, dtype=torch.uint8)
    x1, y1 = sample_batch(tokens, 4, 16, torch.Generator().manual_seed(3))
    x2, y2 = sample_batch(tokens, 4, 16, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (4, 16) and torch.equal(x1[:, 1:], y1[:, :-1])  # targets are the next bytes


def test_fixed_windows_are_fixed_and_checked():
    tokens = torch.arange(200, dtype=torch.uint8)
    x, y = fixed_windows(tokens, 5, 10)
    assert x.shape == (5, 10) and x[0, 0] == 0 and torch.equal(x, fixed_windows(tokens, 5, 10)[0])
    with pytest.raises(ValueError, match="n_windows=500"):
        fixed_windows(tokens, 500, 10)

"""The widgets' words, written once: a count with its noun, and a context length as a label."""

from __future__ import annotations


def plural(n: int, word: str) -> str:
    """``n`` and ``word``, the word plural unless ``n`` is 1, thousands separated: '1 layer', '1,024 tokens'."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def context_label(n: int) -> str:
    """A context length in tokens as the sliders show it: '512', '8k' (thousands of 1,024 tokens)."""
    return f"{n // 1024}k" if n >= 1024 else str(n)

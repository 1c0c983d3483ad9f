"""The shape of an attention block: how many query heads, how many KV heads, and what kind that makes it.

Words used everywhere in this package:
- ``n_heads``: query heads.
- ``n_kv_heads``: key/value heads. Readers may know them as "groups": one KV head per group.
- ``group_size = n_heads // n_kv_heads``: query heads that share one KV head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("MHA", "GQA", "MQA")
LISTED_DIVISORS_MAX_N = 10**12  # above this, messages list only the divisors found up to SMALL_DIVISOR_SEARCH
SMALL_DIVISOR_SEARCH = 10**5


def divisors(n: int) -> list[int]:
    """Every positive divisor of ``n``, ascending: the valid ``n_kv_heads`` for ``n_heads = n``.

    Divisors come in pairs (d, n // d) with d <= sqrt(n), so trying d up to sqrt(n) finds them all:
    O(sqrt n) steps, a tenth of a second for n = 10**12.
    """
    check_positive_int("n", n)
    small, large = [], []
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            small.append(d)
            if d != n // d:
                large.append(n // d)
    return small + large[::-1]


def format_choices(values, head: int = 6, tail: int = 3, complete: bool = True) -> str:
    """``values`` joined by ', ', shortened to the first ``head`` and last ``tail`` when there are more.

    >>> format_choices(range(1, 21))
    '1, 2, 3, 4, 5, 6, ..., 18, 19, 20 (20 in all)'
    """
    values = list(values)
    if len(values) <= head + tail + 1:
        return ", ".join(map(str, values))
    count = f" ({len(values)} in all)" if complete else ""
    return ", ".join(map(str, values[:head])) + ", ..., " + ", ".join(map(str, values[-tail:])) + count


def valid_kv_heads_text(n_heads: int) -> str:
    """The valid ``n_kv_heads`` for ``n_heads`` as a message shows them: every divisor, shortened if many.

    For an ``n_heads`` above LISTED_DIVISORS_MAX_N the full list would take long to find; the text then
    gives the divisors up to SMALL_DIVISOR_SEARCH and their partners, and says the list is partial.
    """
    if n_heads <= LISTED_DIVISORS_MAX_N:
        return format_choices(divisors(n_heads))
    found = [d for d in range(1, SMALL_DIVISOR_SEARCH + 1) if n_heads % d == 0]
    found = sorted({*found, *(n_heads // d for d in found)})
    unsearched = f"divisors between {SMALL_DIVISOR_SEARCH} and n_heads // {SMALL_DIVISOR_SEARCH} not searched"
    return f"{format_choices(found, complete=False)}; {unsearched}"


def check_positive_int(name: str, value) -> int:
    """Return ``value`` if it is a positive int, else raise naming the argument and its value."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be a positive integer (got {type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name}={value} must be a positive integer (1 or more)")
    return value


def check_kv_heads(n_heads: int, n_kv_heads: int) -> None:
    """Raise unless ``n_kv_heads`` divides ``n_heads``; the message lists the valid choices."""
    check_positive_int("n_heads", n_heads)
    check_positive_int("n_kv_heads", n_kv_heads)
    if n_heads % n_kv_heads:
        valid = valid_kv_heads_text(n_heads)
        raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads} (valid: {valid})")


def attention_kind(n_heads: int, n_kv_heads: int) -> str:
    """'MHA' when every query head has its own KV head, 'MQA' when all share one, 'GQA' between."""
    check_kv_heads(n_heads, n_kv_heads)
    if n_kv_heads == n_heads:
        return "MHA"
    if n_kv_heads == 1:
        return "MQA"
    return "GQA"


@dataclass(frozen=True)
class AttentionLayout:
    """A validated (n_heads, n_kv_heads, head_dim, n_layers).

    >>> AttentionLayout(n_heads=32, n_kv_heads=8, head_dim=128, n_layers=32).group_size
    4
    """

    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_layers: int = 1

    def __post_init__(self):
        check_kv_heads(self.n_heads, self.n_kv_heads)
        check_positive_int("head_dim", self.head_dim)
        check_positive_int("n_layers", self.n_layers)

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    @property
    def kind(self) -> str:
        return attention_kind(self.n_heads, self.n_kv_heads)

    def kv_head_of(self, query_head: int) -> int:
        """The KV head that query head ``query_head`` reads (contiguous groups)."""
        if isinstance(query_head, bool) or not isinstance(query_head, int) or not 0 <= query_head < self.n_heads:
            raise ValueError(f"query_head={query_head!r} must be an integer in 0..{self.n_heads - 1}")
        return query_head // self.group_size

    def query_heads_of(self, kv_head: int) -> list[int]:
        """The query heads that share KV head ``kv_head``."""
        if isinstance(kv_head, bool) or not isinstance(kv_head, int) or not 0 <= kv_head < self.n_kv_heads:
            raise ValueError(f"kv_head={kv_head!r} must be an integer in 0..{self.n_kv_heads - 1}")
        g = self.group_size
        return list(range(kv_head * g, (kv_head + 1) * g))

    def valid_kv_heads(self) -> list[int]:
        return divisors(self.n_heads)

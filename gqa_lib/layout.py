"""The shape of an attention block: how many query heads, how many KV heads, and what kind that makes it.

Words used everywhere in this package:
- ``n_heads``: query heads.
- ``n_kv_heads``: key/value heads. Readers may know them as "groups": one KV head per group.
- ``group_size = n_heads // n_kv_heads``: query heads that share one KV head.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("MHA", "GQA", "MQA")


def divisors(n: int) -> list[int]:
    """Every positive divisor of ``n``, ascending: the valid ``n_kv_heads`` for ``n_heads = n``."""
    check_positive_int("n", n)
    return [d for d in range(1, n + 1) if n % d == 0]


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
        valid = ", ".join(map(str, divisors(n_heads)))
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

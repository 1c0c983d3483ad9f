"""The shape of an attention block: how many query heads, how many KV heads, and what kind that makes it.

Words used everywhere in this package:
- ``n_heads``: query heads.
- ``n_kv_heads``: key/value heads. Readers may know them as "groups": one KV head per group.
- ``group_size = n_heads // n_kv_heads``: query heads that share one KV head.
"""

from __future__ import annotations

from dataclasses import dataclass

from gqa_lib.core.checks import check_kv_heads, check_positive_int, divisors

KINDS = ("MHA", "GQA", "MQA")


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
        group_size = self.group_size
        return list(range(kv_head * group_size, (kv_head + 1) * group_size))

    def valid_kv_heads(self) -> list[int]:
        return divisors(self.n_heads)

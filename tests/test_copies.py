"""copies_made: what notebook 03 prints about broadcasting K over the query heads."""

import pytest
import torch

from gqa_lib import grouped_attention
from gqa_lib.core.copies import copies_made


def _qk(batch):
    q = torch.randn(batch, 5, 4, 8).transpose(1, 2)  # (batch, 4, 5, 8), stored token by token as in a layer
    k = torch.randn(batch, 1, 5, 8)  # (batch, 1, 5, 8): one KV head
    return q, k


def test_broadcast_matmul_copies_k_at_batch_2_not_at_batch_1():
    q, k = _qk(1)
    assert copies_made(torch.matmul, q, k.transpose(-2, -1), q=q, k=k) == []
    q, k = _qk(2)
    made = copies_made(torch.matmul, q, k.transpose(-2, -1), q=q, k=k)
    of_k = [c for c in made if c.source == "k"]
    assert len(of_k) == 1 and of_k[0].shape == (2, 4, 8, 5) and of_k[0].nbytes == 4 * k.nbytes


def test_stacked_queries_copy_no_key_or_value():
    q, k = _qk(2)
    v = torch.randn_like(k)
    made = copies_made(grouped_attention, q, k, v, q=q, k=k, v=v)
    assert not [c for c in made if c.source in ("k", "v")]


def test_explicit_copies_are_named():
    k = torch.randn(1, 2, 3, 4)
    made = copies_made(lambda: k.repeat_interleave(3, dim=1), k=k)
    assert [c.source for c in made] == ["k"] and sum(c.nbytes for c in made) == 3 * k.nbytes
    with pytest.raises(TypeError, match="k=list must be a torch.Tensor"):
        copies_made(lambda: None, k=[1])

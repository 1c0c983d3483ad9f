"""RoPE keeps its angles exact in a low-precision module (issue 11).

Before the fix, ``RotaryEmbedding(...).to(torch.bfloat16)`` cast its frequency buffer to bf16 and
multiplied the positions in bf16, where 1000 and 1001 are the same number: both positions were turned
by the same angles. The bound tested here: every rotated number is within one unit in the last place
(ulp) of the module's dtype of the exact rotation, computed in float64 from the same input; that is the
rounding of the exact result to the dtype (at most half an ulp) plus half an ulp to spare.
"""

import pytest
import torch

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.core.mla import MultiHeadLatentAttention
from gqa_lib.core.rope import RotaryEmbedding

pytestmark = pytest.mark.usefixtures("single_thread")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def exact_rotation(x: torch.Tensor, start_pos: int, base: float = 10000.0) -> torch.Tensor:
    """RoPE written from its definition, all in float64: (batch, heads, seq, head_dim)."""
    d = x.shape[-1]
    positions = torch.arange(start_pos, start_pos + x.shape[-2], dtype=torch.float64)
    inv_freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions[:, None] * inv_freq[None, :]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.double().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype``'s numbers at each of ``values`` (float64), subnormals included."""
    info = torch.finfo(dtype)
    exponent = torch.floor(torch.log2(values.abs().clamp_min(info.tiny)))
    return torch.exp2(exponent) * info.eps


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_neighbouring_positions_up_to_100k_turn_differently(dtype):
    rope = RotaryEmbedding(64).to(dtype)
    x = torch.randn(1, 1, 1, 64, generator=torch.Generator().manual_seed(0)).to(dtype)
    for pos in (1, 1000, 4095, 32767, 65535, 99_999):
        pair = rope(x.expand(1, 1, 2, 64).contiguous(), start_pos=pos)  # the same vector at pos and pos + 1
        assert not torch.equal(pair[0, 0, 0], pair[0, 0, 1]), f"positions {pos} and {pos + 1} rotate alike in {dtype}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("start_pos", [0, 1000, 98_000])
def test_rotation_is_within_one_ulp_of_the_exact_one(dtype, start_pos):
    rope = RotaryEmbedding(64).to(dtype)
    x = torch.randn(2, 3, 2000, 64, generator=torch.Generator().manual_seed(start_pos)).to(dtype)
    got = rope(x, start_pos)
    assert got.dtype == dtype
    exact = exact_rotation(x, start_pos)
    err = (got.double() - exact).abs()
    bound = ulp(exact, dtype)
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"error up to {worst:.2f} ulp of {dtype} (allowed 1)"
    rounding = (exact.to(dtype).double() - exact).abs()
    assert err.max() <= rounding.max() + bound.max()  # no worse than rounding the exact result, plus its one ulp


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_a_layer_cast_to_low_precision_rotates_position_1000_and_1001_differently(dtype):
    torch.manual_seed(0)
    layer = GroupedQueryAttention(64, 4, 2).to(dtype)
    x = torch.randn(1, 1, 64).to(dtype).expand(1, 2, 64)  # the same token twice
    with torch.no_grad():
        q, k, _ = layer.qkv(x, start_pos=1000)
    assert not torch.equal(q[0, :, 0], q[0, :, 1]) and not torch.equal(k[0, :, 0], k[0, :, 1])
    torch.testing.assert_close(q.double(), exact_rotation(layer.q_proj(x).view(1, 2, 4, 16).transpose(1, 2), 1000),
                               atol=0, rtol=2 * torch.finfo(dtype).eps)


def test_an_mla_layer_cast_to_bf16_rotates_position_1000_and_1001_differently():
    """MultiHeadLatentAttention uses the same RotaryEmbedding, so it inherits the exact angles."""
    torch.manual_seed(0)
    layer = MultiHeadLatentAttention(64, 4, d_c=16, d_rope=8, head_dim=8).to(torch.bfloat16)
    x = torch.randn(1, 1, 64).to(torch.bfloat16).expand(1, 2, 64)
    with torch.no_grad():
        _, k_rope = layer.compress_kv(x, start_pos=1000)  # (1, 2, d_rope)
        _, q_rope = layer.queries(x, start_pos=1000)  # (1, n_heads, 2, d_rope)
    assert not torch.equal(k_rope[0, 0], k_rope[0, 1])
    assert not torch.equal(q_rope[0, :, 0], q_rope[0, :, 1])


def test_the_frequencies_survive_to_and_half():
    rope = RotaryEmbedding(16, base=500000.0)
    expected = 500000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.float()):
        assert torch.equal(cast(rope).inv_freq(), expected)
    cos, sin = rope.cos_sin(torch.arange(3))
    assert cos.dtype == sin.dtype == torch.float64 and cos.shape == (3, 16)

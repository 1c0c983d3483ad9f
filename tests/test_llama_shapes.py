"""One LLaMA-shaped attention layer with random weights: shapes from data/, group structure from the code."""

import pytest
import torch

from gqa_lib import GroupedQueryAttention, expand_kv, get_model
from gqa_lib.models.catalog import UnknownModelError
from gqa_lib.models.llama_shapes import build_llama_attention, capture_llama_kv, head_difference, llama_config


@pytest.mark.parametrize("name, shape", [("Llama-3 8B", (4096, 32, 8, 128)), ("Llama-3 70B", (8192, 64, 8, 128))])
def test_config_has_the_attention_shape_from_the_model_card(name, shape):
    cfg = llama_config(name)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == shape
    assert cfg.num_hidden_layers == 1


def test_models_without_kv_heads_or_unknown_names_are_refused():
    with pytest.raises(ValueError, match="uses MLA"):
        llama_config("DeepSeek-V3 671B")
    with pytest.raises(UnknownModelError):
        llama_config("Llama-3 9B")


def test_weights_are_seeded_and_sized_like_the_real_layer():
    a, b = build_llama_attention("Llama-3 8B", seed=3), build_llama_attention("Llama-3 8B", seed=3)
    assert torch.equal(a.k_proj.weight, b.k_proj.weight)
    assert a.q_proj.weight.shape == (32 * 128, 4096) and a.k_proj.weight.shape == (8 * 128, 4096)
    assert a.k_proj.weight.dtype == torch.bfloat16
    assert abs(a.q_proj.weight.float().std().item() - 0.02) < 1e-3


def assert_block_structure(diff: torch.Tensor, group_size: int):
    """Zero exactly where two query heads share a KV head, clearly non-zero elsewhere."""
    n = diff.shape[0]
    same = (torch.arange(n)[:, None] // group_size) == (torch.arange(n)[None, :] // group_size)
    assert (diff[same] == 0).all()
    assert (diff[~same] > 0.1).all()


@pytest.fixture(scope="module")
def captured():
    return {name: capture_llama_kv(name, seq_len=5) for name in ("Llama-3 8B", "Llama-3 70B")}


@pytest.mark.parametrize("name, n_heads, group_size", [("Llama-3 8B", 32, 4), ("Llama-3 70B", 64, 8)])
def test_query_heads_see_identical_k_and_v_within_a_group(captured, name, n_heads, group_size):
    c = captured[name]
    assert c.k.shape == c.v.shape == (8, 5, 128)
    assert c.k_seen.shape == c.v_seen.shape == (n_heads, 5, 128) and c.group_size == group_size
    assert_block_structure(head_difference(c.k_seen), group_size)
    assert_block_structure(head_difference(c.v_seen), group_size)
    # transformers' repeat_kv and gqa_lib's expand_kv are the same copy
    torch.testing.assert_close(c.k_seen, expand_kv(c.k[None], group_size)[0], rtol=0, atol=0)
    assert torch.isfinite(c.output).all() and c.output.shape == (5, get_model(name).d_model)


def test_70b_layer_takes_0_3_gb_in_bf16(captured):
    c = captured["Llama-3 70B"]
    d, q, kv = 8192, 64 * 128, 8 * 128
    assert c.param_bytes == 2 * (2 * d * q + 2 * d * kv) == 301_989_888


def test_gqa_lib_layer_with_the_same_random_weights_gives_the_same_output():
    attn = build_llama_attention("Llama-3 8B", dtype=torch.float32, seed=1)
    cfg = attn.config
    ours = GroupedQueryAttention(cfg.hidden_size, 32, 8, head_dim=128, rope_base=cfg.rope_parameters["rope_theta"])
    ours.load_state_dict({f"{n}.weight": getattr(attn, n).weight for n in ("q_proj", "k_proj", "v_proj", "o_proj")})
    c = capture_llama_kv("Llama-3 8B", seq_len=4, dtype=torch.float32, seed=1)
    x = torch.randn(1, 4, cfg.hidden_size, generator=torch.Generator().manual_seed(2))  # the input capture used
    with torch.no_grad():
        _, k, v = ours.qkv(x)
        out = ours(x)
    torch.testing.assert_close(k[0], c.k, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(v[0], c.v, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[0], c.output, rtol=1e-4, atol=1e-4)


def test_head_difference_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"x.shape=\(2, 3\) must be"):
        head_difference(torch.zeros(2, 3))


def test_bad_seq_len_is_refused():
    with pytest.raises(ValueError, match="seq_len=0 must be"):
        capture_llama_kv("Llama-3 8B", seq_len=0)


@pytest.mark.parametrize("name", ["Llama-3 8B", "Llama-3 70B"])
def test_output_rebuilt_by_hand_from_captured_q_k_v_is_the_layers_output(captured, name):
    c = captured[name]
    n, d_head = c.q.shape[1], c.q.shape[2]
    assert c.q.shape == (c.n_heads, 5, 128) and c.o_weight.shape == (get_model(name).d_model, c.n_heads * 128)
    w = (c.q @ c.k_seen.transpose(-1, -2) / d_head**0.5).masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
    rebuilt = (w.softmax(-1) @ c.v_seen).transpose(0, 1).reshape(n, -1) @ c.o_weight.float().T
    scale = c.output.abs().max()
    assert (rebuilt - c.output).abs().max() < 0.02 * scale  # bf16 layer vs float32 rebuild
    # without the causal mask the rebuild is clearly wrong: the check can fail
    wrong = ((c.q @ c.k_seen.transpose(-1, -2) / d_head**0.5).softmax(-1) @ c.v_seen).transpose(0, 1).reshape(n, -1)
    assert (wrong @ c.o_weight.float().T - c.output).abs().max() > 0.05 * scale

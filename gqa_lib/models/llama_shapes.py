"""One attention layer with the exact shape of a real model, built with transformers' LLaMA code.

The weights are random: what this shows is the structure the code imposes (query head i reads KV
head i // group_size, through transformers' ``repeat_kv``), not anything a trained model learned.
Shapes come from ``data/models.json`` through ``gqa_lib.models.catalog.get_model``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gqa_lib.core.checks import check_float_dtype
from gqa_lib.models.catalog import get_model
from gqa_lib.models.smollm import one_cpu_thread

INIT_STD = 0.02  # LlamaConfig's default initializer_range


def llama_config(name: str):
    """A one-layer ``LlamaConfig`` with the attention shape of model ``name`` from ``data/models.json``.

    Only the attention shape is copied (hidden size, query heads, KV heads, head dim); everything
    else keeps LlamaConfig's defaults, which do not change any shape.
    """
    from transformers import LlamaConfig

    spec = get_model(name)
    if spec.n_kv_heads is None:
        raise ValueError(f"name={name!r} uses {spec.attention}, which has no KV heads to share; "
                         "pick a model with MHA, GQA or MQA")
    cfg = LlamaConfig(hidden_size=spec.d_model, num_attention_heads=spec.n_heads,
                      num_key_value_heads=spec.n_kv_heads, head_dim=spec.head_dim, num_hidden_layers=1,
                      intermediate_size=4 * spec.d_model, vocab_size=32, max_position_embeddings=spec.context)
    cfg._attn_implementation = "eager"  # plain matmul + softmax: attention weights are visible
    return cfg


def build_llama_attention(name: str, dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """``LlamaAttention`` (layer 0) with model ``name``'s attention shape and seeded N(0, 0.02) weights.

    The layer is made on the meta device first, so no memory is spent on an initialisation we
    overwrite; Llama-3 70B's layer holds 151 M numbers, 0.30 GB in bf16.
    """
    from transformers.models.llama.modeling_llama import LlamaAttention

    check_float_dtype("dtype", dtype)
    cfg = llama_config(name)
    with torch.device("meta"):
        attn = LlamaAttention(cfg, layer_idx=0).to(dtype)
    attn = attn.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0.0, INIT_STD, generator=g)  # drawn in the layer's dtype: no float32 copy of 0.6 GB
    return attn.eval()


@dataclass
class LayerKV:
    """Keys and values one random-weight LLaMA-shaped attention layer made for one input (batch 1)."""

    name: str
    n_heads: int
    n_kv_heads: int
    k: torch.Tensor  # (n_kv_heads, seq, head_dim): what the KV cache holds, after RoPE
    v: torch.Tensor  # (n_kv_heads, seq, head_dim)
    k_seen: torch.Tensor  # (n_heads, seq, head_dim): K as each query head reads it (transformers' repeat_kv)
    v_seen: torch.Tensor  # (n_heads, seq, head_dim)
    output: torch.Tensor  # (seq, d_model): the layer's output
    param_bytes: int  # memory the layer's weights take
    q: torch.Tensor | None = None  # (n_heads, seq, head_dim): the queries, after RoPE
    o_weight: torch.Tensor | None = None  # (d_model, n_heads * head_dim): o_proj's weight, in the layer's dtype

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads


def capture_llama_kv(name: str, seq_len: int = 6, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> LayerKV:
    """Run ``seq_len`` random token vectors through a random-weight layer shaped like ``name``; keep K and V.

    Q, K and V are taken with hooks on the layer's own q_proj, k_proj and v_proj (before RoPE),
    rotated with transformers' ``apply_rotary_pos_emb`` and K, V expanded with transformers'
    ``repeat_kv``, as its attention does. With ``q``, ``k_seen``, ``v_seen`` and ``o_weight`` the
    layer's ``output`` can be rebuilt by hand (notebook 05 does; tests/test_llama_shapes.py checks it).
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 1 <= seq_len <= 512:
        raise ValueError(f"seq_len={seq_len!r} must be an integer in 1..512")
    check_float_dtype("dtype", dtype)  # 'bf16' is a dtype's name, not a device: say so before torch does
    with one_cpu_thread():
        return _capture_llama_kv(name, seq_len, dtype, seed)


@torch.no_grad()
def _capture_llama_kv(name: str, seq_len: int, dtype: torch.dtype, seed: int) -> LayerKV:
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb, repeat_kv

    attn = build_llama_attention(name, dtype, seed)
    cfg = attn.config
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, seq_len, cfg.hidden_size, generator=g).to(dtype)  # (1, seq, d_model)
    pos = LlamaRotaryEmbedding(cfg)(x, torch.arange(seq_len)[None])  # cos, sin: (1, seq, head_dim)
    seen = {}
    hooks = [getattr(attn, f"{n}_proj").register_forward_hook(lambda m, a, out, n=n: seen.__setitem__(n, out))
             for n in "qkv"]
    mask = torch.full((seq_len, seq_len), float("-inf")).triu(1).to(dtype)[None, None]  # (1, 1, seq, seq) causal
    try:
        out, _ = attn(x, position_embeddings=pos, attention_mask=mask)
    finally:
        for h in hooks:
            h.remove()
    d = cfg.head_dim
    q, k, v = (seen[n].view(1, seq_len, -1, d).transpose(1, 2) for n in "qkv")  # (1, heads, seq, head_dim)
    q, k = apply_rotary_pos_emb(q, k, *pos)
    g_size = cfg.num_attention_heads // cfg.num_key_value_heads
    nbytes = sum(p.numel() * p.element_size() for p in attn.parameters())
    return LayerKV(name=name, n_heads=cfg.num_attention_heads, n_kv_heads=cfg.num_key_value_heads,
                   k=k[0].float(), v=v[0].float(), k_seen=repeat_kv(k, g_size)[0].float(),
                   v_seen=repeat_kv(v, g_size)[0].float(), output=out[0].float(), param_bytes=nbytes,
                   q=q[0].float(), o_weight=attn.o_proj.weight.detach())


def head_difference(x: torch.Tensor) -> torch.Tensor:
    """(heads, heads) matrix: the largest absolute difference between the tensors of two heads.

    ``x``: (heads, seq, head_dim), e.g. K as the query heads see it. Exactly 0 where two heads read
    the same KV head.
    """
    if x.ndim != 3:
        raise ValueError(f"x.shape={tuple(x.shape)} must be (heads, seq, head_dim)")
    flat = x.reshape(x.shape[0], -1).float()  # (heads, seq * head_dim)
    return (flat[:, None, :] - flat[None, :, :]).abs().amax(dim=-1)

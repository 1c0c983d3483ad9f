"""A small decoder-only language model built from :class:`GroupedQueryAttention` (LLaMA-style blocks).

Big enough to generate and to train for a few minutes on a laptop CPU; small enough to read in one
screen. Tokens are bytes (vocabulary 256), so no tokenizer file is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.core.checks import check_positive_int, refuse_dtype_names
from gqa_lib.core.kv_cache import KVCache
from gqa_lib.core.layout import AttentionLayout


@dataclass(frozen=True)
class TinyLMConfig:
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 8
    d_ff: int = 384
    max_len: int = 512

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "d_ff", "max_len"):
            check_positive_int(name, getattr(self, name))
        AttentionLayout(self.n_heads, self.n_kv_heads, 2)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model={self.d_model} / n_heads={self.n_heads} = head_dim "
                             f"{self.d_model // self.n_heads} must be even for RoPE")


class Block(nn.Module):
    def __init__(self, cfg: TinyLMConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model)
        self.attn = GroupedQueryAttention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads)
        self.mlp_norm = nn.RMSNorm(cfg.d_model)
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x, cache: KVCache | None = None):
        x = x + self.attn(self.attn_norm(x), cache)
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class TinyLM(nn.Module):
    def __init__(self, cfg: TinyLMConfig = TinyLMConfig()):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied, as in GPT-2 and SmolLM2

    def to(self, *args, **kwargs):
        """nn.Module.to, but a dtype's name such as 'bf16' is refused with the dtype to pass instead."""
        refuse_dtype_names("model.to", args, kwargs)
        return super().to(*args, **kwargs)

    def new_caches(self, batch: int, max_len: int | None = None) -> list[KVCache]:
        """One empty KV cache per layer."""
        max_len = self.cfg.max_len if max_len is None else max_len
        return [b.attn.new_cache(batch, max_len) for b in self.blocks]

    def check_ids(self, idx) -> None:
        """Raise unless ``idx`` is a (batch, seq) integer tensor of token ids in 0..vocab_size-1."""
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"idx={type(idx).__name__} must be a (batch, seq) tensor of token ids; "
                            "make one with gqa_lib.models.tiny_lm.encode(text)")
        if idx.ndim != 2:
            raise ValueError(f"idx.shape={tuple(idx.shape)} must be (batch, seq)")
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise TypeError(f"idx.dtype={idx.dtype} must be an integer dtype (token ids, torch.long)")
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.cfg.vocab_size):
            raise ValueError(f"idx holds token ids {idx.min().item()}..{idx.max().item()}; "
                             f"valid: 0..{self.cfg.vocab_size - 1} (vocab_size={self.cfg.vocab_size})")

    def forward(self, idx: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        """Logits (batch, seq, vocab) for token ids ``idx`` (batch, seq).

        ``caches``: None, or one KVCache per layer (from :meth:`new_caches`), filled as the tokens go by.
        """
        self.check_ids(idx)
        if caches is not None:
            if not isinstance(caches, (list, tuple)):
                raise TypeError(f"caches={type(caches).__name__} must be a list of one KVCache per layer "
                                f"({len(self.blocks)}); make it with model.new_caches(batch)")
            if len(caches) != len(self.blocks):
                raise ValueError(f"got {len(caches)} caches for {len(self.blocks)} layers")
        x = self.embed(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.head(self.norm(x))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, n_new: int, use_cache: bool = True, on_step=None) -> torch.Tensor:
        """Greedy continuation of ``idx`` (batch, seq) by ``n_new`` tokens.

        Without the cache every step runs the whole sequence again; with it, each step runs only the
        newest token. ``on_step(step)`` is called after each new token (for timing).
        """
        check_positive_int("n_new", n_new)
        self.check_ids(idx)
        if idx.shape[1] < 1:
            raise ValueError(f"idx.shape={tuple(idx.shape)} must be (batch, seq) with seq >= 1")
        if idx.shape[1] + n_new > self.cfg.max_len:
            raise ValueError(f"prompt length {idx.shape[1]} + n_new={n_new} exceeds max_len={self.cfg.max_len}")
        caches = self.new_caches(idx.shape[0]) if use_cache else None
        out, step_input = idx, idx
        for step in range(n_new):
            logits = self(step_input if use_cache else out, caches)
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # (batch, 1)
            out = torch.cat([out, nxt], dim=1)
            step_input = nxt
            if on_step is not None:
                on_step(step)
        return out


def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as a (1, n) tensor of token ids."""
    if not isinstance(text, str):
        raise TypeError(f"text={text!r} must be a string (got {type(text).__name__})")
    return torch.tensor([list(text.encode("utf-8"))], dtype=torch.long)


def decode(ids: torch.Tensor) -> str:
    """The text of byte token ids (any shape); bytes that are not valid UTF-8 show as U+FFFD."""
    if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"ids={ids!r} must be an integer tensor of byte token ids 0..255")
    if ids.numel() and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"ids holds {ids.min().item()}..{ids.max().item()}; byte token ids are 0..255")
    return bytes(ids.flatten().tolist()).decode("utf-8", errors="replace")

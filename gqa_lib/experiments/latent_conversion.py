"""Turn a trained GQA layer into latent attention: one shared latent per token cached instead of K and V.

A GQA layer makes its keys and values with two matrices, stacked here as one:

    [k; v] = W x,   W = [W_k; W_v]   (2 * n_kv_heads * head_dim, d_model); for SmolLM2 (384, 576)

Any rank-r approximation ``W ~ U D`` with ``U`` (2 * n_kv_heads * head_dim, r) and ``D`` (r, d_model)
splits the layer in two: a down-projection ``c = D x`` (r numbers per token: the **latent**, what is
cached) and up-projections ``k = U_k c``, ``v = U_v c`` (the rows of ``U`` that make keys and values).
At r = 2 * n_kv_heads * head_dim the factorisation is exact and the cache is as big as the GQA cache;
below it, the cache shrinks to r numbers a token and layer, whatever the number of heads.

Two ways to choose ``U``, both ``D = U^T W`` (project W's outputs onto r orthonormal directions):

- ``plain``: U = the top-r left singular vectors of W. Best if every input direction mattered equally.
- ``input-weighted``: U = the top-r left singular vectors of ``W S``, where ``S S^T = C`` is the second
  moment of the layer's real inputs (after its RMSNorm) on calibration text. The error a token sees is
  ``(W - U U^T W) x``; its mean square over the inputs is ``||(W - U U^T W) S||_F^2``, which the SVD of
  ``W S`` minimises (Eckart-Young). Because ``U U^T (W S)`` is that truncated SVD, no ``S^-1`` is needed
  to "unwhiten". Equivalently, U holds the top principal directions of the layer's real [k; v] outputs.
  Inputs of a trained model are far from isotropic (a few directions carry most of their energy), so
  this keeps what the inputs actually excite and drops what they never do.

RoPE is kept in its explicit form: the key is rebuilt from the latent (``U_k c``), then rotated by its
position, as the original layer rotates ``W_k x``. The rotation sits between the query and ``U_k``, and
it differs for every cached position, so ``U_k`` can no longer be folded into the query (DeepSeek's
"absorbed" form); that is why DeepSeek-V2 adds a separate, decoupled RoPE key instead. This conversion
needs no new weights and no training, at the price of rebuilding keys at each step.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from gqa_lib.core.attention import GroupedQueryAttention, grouped_attention
from gqa_lib.core.checks import check_float_dtype, check_layer_input, check_positive_int
from gqa_lib.core.kv_cache import store
from gqa_lib.core.layout import AttentionLayout
from gqa_lib.core.rope import RopeScaling, RotaryEmbedding


class LatentCache:
    """The latent of every token seen so far, for one layer: (batch, max_len, rank). No K, no V."""

    def __init__(self, batch: int, rank: int, max_len: int, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        for name, v in (("batch", batch), ("rank", rank), ("max_len", max_len)):
            check_positive_int(name, v)
        dtype = check_float_dtype("dtype", dtype)  # as KVCache: no integer or fp8 type, which need scales
        self.batch, self.rank, self.max_len = batch, rank, max_len
        self.latent = torch.zeros(batch, max_len, rank, dtype=dtype, device=device)
        self.length = 0

    @property
    def nbytes(self) -> int:
        return self.latent.nbytes

    def append(self, latent: torch.Tensor) -> torch.Tensor:
        """Store (batch, new, rank) latents; return all stored so far, (batch, length, rank)."""
        if latent.ndim != 3 or latent.shape[0] != self.batch or latent.shape[2] != self.rank:
            raise ValueError(f"latent.shape={tuple(latent.shape)} does not match the cache; "
                             f"expected ({self.batch}, new, {self.rank})")
        new = latent.shape[1]
        if self.length + new > self.max_len:
            raise ValueError(f"cache is full: {self.length} stored + {new} new > max_len={self.max_len}")
        store("latent", self.latent[:, self.length:self.length + new], latent)  # OverflowError past the dtype
        self.length += new
        return self.latent[:, :self.length]


class LatentKVAttention(nn.Module):
    """GQA attention whose keys and values are rebuilt from one cached latent per token (explicit RoPE).

    Input and output (batch, seq, d_model). Queries and output projection are a GQA layer's; keys and
    values: ``c = kv_down(x)`` (rank numbers, cached), ``k = RoPE(k_up(c))``, ``v = v_up(c)``, with
    ``n_kv_heads`` heads of ``head_dim`` each, attended by ``gqa_lib.grouped_attention``.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, rank: int,
                 rope_base: float = 10000.0, rope_scaling: RopeScaling | None = None):
        super().__init__()
        self.layout = AttentionLayout(n_heads, n_kv_heads, head_dim)
        check_positive_int("rank", rank)
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.rank = rank
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.kv_down = nn.Linear(d_model, rank, bias=False)  # D: what is cached
        self.k_up = nn.Linear(rank, n_kv_heads * head_dim, bias=False)  # U_k
        self.v_up = nn.Linear(rank, n_kv_heads * head_dim, bias=False)  # U_v
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)
        self.rope = RotaryEmbedding(head_dim, rope_base, rope_scaling)

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, rank={self.rank}"

    def new_cache(self, batch: int, max_len: int, dtype=None, device=None) -> LatentCache:
        """An empty cache: ``rank`` numbers per token, nothing per head."""
        w = self.kv_down.weight
        return LatentCache(batch, self.rank, max_len, dtype or w.dtype, device or w.device)

    def keys_values(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rebuild keys (rotated for positions 0..seq-1) and values, (batch, n_kv_heads, seq, head_dim) each."""
        b, s, _ = latent.shape
        k = self.k_up(latent).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_up(latent).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return self.rope(k), v  # RoPE after the up-projection: the reason U_k cannot move into the query

    def forward(self, x: torch.Tensor, cache: LatentCache | None = None) -> torch.Tensor:
        """(batch, seq, d_model) -> (batch, seq, d_model); with ``cache``, ``x`` holds the new tokens only.
        Raises ValueError/TypeError naming a bad ``x`` (shape, dtype, nan or inf) or a ``cache`` of another type."""
        check_layer_input(x, self.d_model, self.q_proj.weight.dtype)
        if cache is not None and not isinstance(cache, LatentCache):
            raise TypeError(f"cache={type(cache).__name__} must be a LatentCache (make one with .new_cache) or None")
        b, s, _ = x.shape
        start = 0 if cache is None else cache.length
        q = self.rope(self.q_proj(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2), start)
        latent = self.kv_down(x)  # (batch, seq, rank)
        if cache is not None:
            latent = cache.append(latent).to(q.dtype)  # every token so far: (batch, start + seq, rank)
        k, v = self.keys_values(latent)
        out = grouped_attention(q, k, v, causal=True)  # (batch, n_heads, seq, head_dim)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim))


def check_rank(rank, layer: GroupedQueryAttention) -> int:
    full = min(2 * layer.n_kv_heads * layer.head_dim, layer.d_model)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
        raise ValueError(f"rank={rank!r} must be an integer in 1..{full} (the rank of this layer's [W_k; W_v])")
    return rank


def input_square_root(second_moment: torch.Tensor) -> torch.Tensor:
    """A symmetric S with S S^T = ``second_moment`` (d, d), from its eigendecomposition (negative rounding clipped)."""
    if second_moment.ndim != 2 or second_moment.shape[0] != second_moment.shape[1]:
        raise ValueError(f"second_moment.shape={tuple(second_moment.shape)} must be square (d_model, d_model)")
    c = second_moment.double()
    eigenvalues, vectors = torch.linalg.eigh((c + c.T) / 2)
    return vectors * eigenvalues.clamp_min(0).sqrt() @ vectors.T


def kv_basis(layer: GroupedQueryAttention,
             second_moment: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors U (2 * n_kv_heads * head_dim, k) and singular values of [W_k; W_v] (times S if given).

    Columns are sorted from the largest singular value down; the first r make the rank-r latent.
    """
    w = torch.cat([layer.k_proj.weight, layer.v_proj.weight]).detach().double()  # (2 * n_kv * head_dim, d_model)
    target = w if second_moment is None else w @ input_square_root(second_moment)
    u, singular_values, _ = torch.linalg.svd(target, full_matrices=False)
    return u, singular_values


def to_latent(layer: GroupedQueryAttention, rank: int, second_moment: torch.Tensor | None = None,
              basis: torch.Tensor | None = None) -> LatentKVAttention:
    """``layer`` with its K and V made from a rank-``rank`` latent; input-weighted if ``second_moment`` is given.

    ``second_moment``: (d_model, d_model), the mean of x x^T over the layer's inputs on calibration text
    (see :func:`input_second_moments`). ``basis``: the U of :func:`kv_basis`, if already computed (the
    same for every rank). At full rank the result computes what ``layer`` computes.
    """
    if not isinstance(layer, GroupedQueryAttention):
        raise TypeError(f"layer={type(layer).__name__} must be a GroupedQueryAttention")
    if layer.k_proj.bias is not None or layer.rope is None:
        raise ValueError("the layer must have RoPE and no biases (the Llama-family layers this converts)")
    check_rank(rank, layer)
    if second_moment is not None and second_moment.shape != (layer.d_model, layer.d_model):
        raise ValueError(f"second_moment.shape={tuple(second_moment.shape)} must be ({layer.d_model}, {layer.d_model})")
    w = torch.cat([layer.k_proj.weight, layer.v_proj.weight]).detach().double()
    u = (kv_basis(layer, second_moment)[0] if basis is None else basis)[:, :rank].double()  # orthonormal columns
    n_k = layer.n_kv_heads * layer.head_dim
    new = LatentKVAttention(layer.d_model, layer.n_heads, layer.n_kv_heads, layer.head_dim, rank, layer.rope.base,
                            layer.rope.scaling)  # the source layer's RoPE, scaling included
    dtype, device = layer.k_proj.weight.dtype, layer.k_proj.weight.device
    new.to(device=device, dtype=dtype)
    with torch.no_grad():
        new.q_proj.weight.copy_(layer.q_proj.weight)
        new.o_proj.weight.copy_(layer.o_proj.weight)
        new.kv_down.weight.copy_((u.T @ w).to(dtype))  # D = U^T W: (rank, d_model)
        new.k_up.weight.copy_(u[:n_k].to(dtype))
        new.v_up.weight.copy_(u[n_k:].to(dtype))
    return new.eval()


@torch.no_grad()
def input_second_moments(decoder, windows: torch.Tensor, batch: int = 4) -> list[torch.Tensor]:
    """Per layer, the mean of x x^T over every token of ``windows`` (n, seq), x the attention input (after its norm).

    ``decoder`` is a ``gqa_lib.models.smollm_decoder.SmolLMDecoder``; returns ``n_layers`` float64 (d_model, d_model).
    """
    if windows.ndim != 2 or len(windows) == 0:
        raise ValueError(f"windows.shape={tuple(windows.shape)} must be (n_windows >= 1, seq)")
    sums = [torch.zeros(decoder.config.hidden_size, decoder.config.hidden_size, dtype=torch.float64)
            for _ in range(decoder.n_layers)]
    for i in range(0, len(windows), batch):
        inputs = []
        decoder.hidden_states(windows[i:i + batch], inputs_of=inputs)
        for total, x in zip(sums, inputs, strict=True):
            flat = x.reshape(-1, x.shape[-1]).double()  # (tokens, d_model)
            total += flat.T @ flat
    n = windows.numel()
    return [s / n for s in sums]


def latent_decoders(decoder, ranks, second_moments: list[torch.Tensor] | None = None) -> dict:
    """{rank: a copy of ``decoder`` (a ``SmolLMDecoder`` of GQA layers), every layer converted by :func:`to_latent`}.

    Each layer's SVD is computed once and cut at every rank.
    """
    moments = second_moments or [None] * decoder.n_layers
    if len(moments) != decoder.n_layers:
        raise ValueError(f"second_moments has {len(moments)} entries; the decoder has {decoder.n_layers} layers")
    bases = [kv_basis(a, m)[0] for a, m in zip(decoder.attention, moments, strict=True)]
    return {r: decoder.with_attention([to_latent(a, r, basis=u) for a, u in zip(decoder.attention, bases, strict=True)])
            for r in ranks}


def latent_decoder(decoder, rank: int, second_moments: list[torch.Tensor] | None = None):
    """``decoder`` with every layer converted at one ``rank`` (see :func:`latent_decoders`)."""
    return latent_decoders(decoder, [rank], second_moments)[rank]


@torch.no_grad()
def window_losses(model, windows: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """Mean next-token loss (nats) of each window of ``windows`` (n, seq): (n,) float64.

    ``model`` maps (batch, seq) ids to (batch, seq, vocab) logits (a ``SmolLMDecoder``). Every window
    predicts seq - 1 tokens, so the mean of these is the mean loss per token.
    """
    out = []
    for i in range(0, len(windows), batch):
        ids = windows[i:i + batch]
        logits = model(ids)[:, :-1].float()  # (b, seq - 1, vocab)
        loss = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (b, seq - 1)
        out.append(loss.mean(1).double())
    return torch.cat(out)

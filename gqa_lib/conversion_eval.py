"""Convert the real SmolLM2 between KV-head counts and measure what that does to its perplexity.

Ainslie et al. (2023, "GQA", section 2.1) turn a trained multi-head model into a grouped one by
building each new KV head from the old heads of its group: their mean (best), the first of them, or
a fresh random projection (worst), followed by a short "uptraining". This module does the same to the
transformers model of SmolLM2-135M (9 query heads, 3 KV heads, 30 layers): 3 KV heads -> 1 (MQA) in
every layer. The per-layer arithmetic is gqa_lib.convert's (reduce_kv_heads, expand_to_mha); this
module moves weights between transformers' ``LlamaAttention`` and gqa_lib's layer and back.

Held-out text: the validation files of the standard-library corpus (gqa_lib/corpus.py), tokenised with
SmolLM2's own tokenizer, cut into fixed windows.
"""

from __future__ import annotations

import copy
import math

import torch
from torch.nn import functional as F

from .attention import GroupedQueryAttention
from .convert import METHODS, expand_to_mha, reduce_kv_heads
from .layout import check_positive_int


def attention_modules(model) -> list:
    """The ``self_attn`` module of every decoder layer of a transformers Llama-family model."""
    return [layer.self_attn for layer in model.model.layers]


def kv_heads_of(model) -> list[int]:
    """KV heads each layer computes, read from the K projection's size (not the config)."""
    return [attn.k_proj.out_features // attn.head_dim for attn in attention_modules(model)]


def _as_gqa_layer(attn, n_heads: int, n_kv_heads: int) -> GroupedQueryAttention:
    """gqa_lib's layer holding ``attn``'s four projections (RoPE is not needed to move weights)."""
    d_model = attn.q_proj.in_features
    layer = GroupedQueryAttention(d_model, n_heads, n_kv_heads, head_dim=attn.head_dim,
                                  bias=attn.k_proj.bias is not None, rope=False)
    layer.load_state_dict({f"{n}.{p}": t for n in ("q_proj", "k_proj", "v_proj", "o_proj")
                           for p, t in getattr(attn, n).named_parameters()})
    return layer


def _set_kv_projections(model, attn, new: GroupedQueryAttention) -> None:
    """Put ``new``'s K and V projections into transformers' ``attn`` and fix the bookkeeping that reads them."""
    attn.k_proj, attn.v_proj = new.k_proj, new.v_proj
    attn.num_key_value_groups = new.group_size  # what eager attention's repeat_kv reads


def convert_kv_heads(model, n_kv_heads: int, method: str = "mean", seed: int = 0):
    """A copy of a transformers Llama-family ``model`` whose every layer has ``n_kv_heads`` KV heads.

    Fewer heads than the model has: ``method`` is 'mean', 'first' or 'random' (gqa_lib.convert.reduce_kv_heads,
    random with a generator seeded by ``seed``). As many heads as query heads: expansion to MHA
    (gqa_lib.convert.expand_to_mha), which changes no output.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known (valid: {', '.join(METHODS)})")
    cfg = model.config
    n_heads, old_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    check_positive_int("n_kv_heads", n_kv_heads)
    new_model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    for attn in attention_modules(new_model):
        layer = _as_gqa_layer(attn, n_heads, old_kv)
        if n_kv_heads == n_heads and old_kv != n_heads:
            new = expand_to_mha(layer)
        else:
            new = reduce_kv_heads(layer, n_kv_heads, method, generator)
        _set_kv_projections(new_model, attn, new)
    new_model.config.num_key_value_heads = n_kv_heads  # what a new cache is sized by
    return new_model


def window_token_ids(tokenizer, text: str, n_windows: int, window: int) -> torch.Tensor:
    """``n_windows`` evenly spaced windows of ``window`` tokens of ``text``: (n_windows, window) int64."""
    check_positive_int("n_windows", n_windows)
    check_positive_int("window", window)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if len(ids) < n_windows * window:
        raise ValueError(f"text has {len(ids)} tokens; n_windows={n_windows} x window={window} needs more")
    starts = torch.linspace(0, len(ids) - window, n_windows).long()
    return ids[starts[:, None] + torch.arange(window)]  # (n_windows, window)


@torch.no_grad()
def mean_nll(model, windows: torch.Tensor, batch: int = 4) -> float:
    """Mean next-token loss (nats) over every predicted token of ``windows`` (n, window); window >= 2."""
    _check_windows("windows", windows)
    check_positive_int("batch", batch)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        ids = windows[i:i + batch]
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]  # (b, window - 1, vocab)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += ids[:, 1:].numel()
    model.train(was_training)
    return total / count


def _check_windows(name: str, windows) -> None:
    """Token windows are a (n, window) integer tensor with window >= 2: a 1-token window predicts nothing."""
    if not isinstance(windows, torch.Tensor) or windows.ndim != 2 or windows.dtype.is_floating_point:
        shape = tuple(windows.shape) if isinstance(windows, torch.Tensor) else type(windows).__name__
        raise TypeError(f"{name}={shape} must be a (n_windows, window) integer tensor; see window_token_ids")
    if windows.shape[0] < 1 or windows.shape[1] < 2:
        raise ValueError(f"{name}.shape={tuple(windows.shape)} must hold at least one window of 2 or more tokens "
                         "(each token after the first is predicted)")


def perplexity(model, windows: torch.Tensor, batch: int = 4) -> float:
    return math.exp(mean_nll(model, windows, batch))


@torch.no_grad()
def max_logit_difference(model_a, model_b, ids: torch.Tensor) -> float:
    """Largest absolute difference between two models' logits on ``ids`` (batch, seq)."""
    a = model_a(input_ids=ids, use_cache=False).logits
    b = model_b(input_ids=ids, use_cache=False).logits
    return (a - b).abs().max().item()


def uptrain(model, train_windows: torch.Tensor, steps: int, batch: int = 2, lr: float = 1e-4, seed: int = 0,
            only_kv: bool = True, progress=None) -> list[float]:
    """Continue training ``model`` in place for ``steps`` AdamW steps on random rows of ``train_windows``.

    ``only_kv``: train only the K and V projections, the weights the conversion replaced (cheaper, and
    a few dozen steps on little text cannot then disturb the rest of the model). Returns the losses.
    """
    check_positive_int("steps", steps)
    check_positive_int("batch", batch)
    _check_windows("train_windows", train_windows)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr!r} must be a finite positive number, such as 1e-4")
    g = torch.Generator().manual_seed(seed)
    params = []
    for name, p in model.named_parameters():
        train_it = (not only_kv) or name.endswith(("k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias"))
        p.requires_grad_(train_it)
        if train_it:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        ids = train_windows[torch.randint(0, len(train_windows), (batch,), generator=g)]  # (batch, window)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step, loss.item())
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return losses


def plot_conversion(rows: list[dict], vocab_size: int | None = None, axes=None):
    """Left: held-out loss of every condition of the conversion table. Right: loss during uptraining.

    With ``vocab_size``, a line marks the loss of a uniform guess over the vocabulary, ln(vocab_size).
    """
    import matplotlib.pyplot as plt

    from .plots import NEUTRAL, PALETTE

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
    ax_bar, ax_up = axes
    base = float(next(r for r in rows if r["condition"].startswith("original ("))["val_nll"])
    colour = {9: PALETTE["MHA"], 3: PALETTE["GQA"], 1: PALETTE["MQA"]}
    names = [r["condition"] + (f" ({r['uptrain_steps']} steps)" if r["uptrain_steps"] else "") for r in rows]
    losses = [float(r["val_nll"]) for r in rows]
    ax_bar.barh(range(len(rows)), losses, color=[colour[int(r["n_kv_heads"])] for r in rows])
    ax_bar.set_yticks(range(len(rows)), names, fontsize=8)
    ax_bar.invert_yaxis()
    ax_bar.axvline(base, color=NEUTRAL, ls="--", lw=1, label="original")
    if vocab_size:
        ax_bar.axvline(math.log(vocab_size), color=NEUTRAL, ls=":", lw=1.5,
                       label=f"uniform guess over {vocab_size:,} tokens")
        ax_bar.legend(fontsize=8, loc="lower right")
    for i, x in enumerate(losses):
        ax_bar.text(x, i, f" {x:.2f}", va="center", fontsize=8)
    ax_bar.set_xlabel("held-out loss (nats per token)")
    ax_bar.set_title("SmolLM2: 3 KV heads -> 1 (MQA) in all 30 layers")
    curve = [(0, next(float(r["val_nll"]) for r in rows if r["condition"] == "MQA by mean"))]
    curve += [(int(r["uptrain_steps"]), float(r["val_nll"])) for r in rows
              if r["condition"] == "MQA by mean, uptrained"]
    ax_up.plot(*zip(*curve, strict=True), "o-", color=PALETTE["MQA"], label="mean-pooled MQA")
    control = [r for r in rows if "control" in r["condition"]]
    if control:
        ax_up.plot([0, int(control[0]["uptrain_steps"])], [base, float(control[0]["val_nll"])], "s--",
                   color=PALETTE["GQA"], label="original 3 KV heads, same uptraining")
    ax_up.axhline(base, color=NEUTRAL, ls=":", lw=1, label="original, not uptrained")
    ax_up.set_xlabel("uptraining steps (K and V projections only)")
    ax_up.set_ylabel("held-out loss (nats per token)")
    ax_up.set_title("Uptraining the mean-pooled model")
    ax_up.legend(fontsize=8)
    return axes

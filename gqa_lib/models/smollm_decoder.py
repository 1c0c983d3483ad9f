"""SmolLM2 rebuilt around ``gqa_lib``'s attention layers and caches, so any attention layer can be swapped in.

transformers runs SmolLM2 with its own attention and its own cache. To measure what changes when the
attention changes (an MHA twin, fewer KV heads, a latent cache), we keep everything else exactly as
transformers has it and replace only the attention:

    token ids -> embed_tokens                                            (transformers' module)
    for each of the 30 layers:
        x = x + attention(input_layernorm(x), cache)                     (gqa_lib's layer, with its cache)
        x = x + mlp(post_attention_layernorm(x))                         (transformers' modules)
    logits = lm_head(norm(x))                                            (transformers' modules)

The embedding, norms, MLPs and head are the very modules of the loaded model (shared, not copied), so
a decoder costs only its attention weights. An attention layer is anything with
``forward(x, cache=None) -> (batch, seq, d_model)`` and ``new_cache(batch, max_len)``: gqa_lib's
``GroupedQueryAttention`` (MHA, GQA, MQA) and ``gqa_lib.experiments.latent_conversion.LatentKVAttention`` both are.
tests/test_smollm_decoder.py checks the logits against transformers' and cached greedy decoding
against the uncached pass.
"""

from __future__ import annotations

import torch
from torch import nn

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.core.checks import check_positive_int
from gqa_lib.core.rope import rope_from_config


def attention_from_transformers(attn, config) -> GroupedQueryAttention:
    """``GroupedQueryAttention`` holding the weights of one transformers ``LlamaAttention`` ``attn``.

    The number of KV heads is read from the K projection's size, so a model whose layers were converted
    (``gqa_lib.experiments.smollm_conversion.convert_kv_heads``) gives layers with its new head count.
    """
    head_dim = config.head_dim
    n_kv_heads = attn.k_proj.out_features // head_dim
    bias = attn.k_proj.bias is not None
    base, scaling = rope_from_config(config)  # refuses a RoPE rule it does not implement, naming it
    layer = GroupedQueryAttention(config.hidden_size, config.num_attention_heads, n_kv_heads, head_dim=head_dim,
                                  bias=bias, rope_base=base, rope_scaling=scaling)
    w = attn.q_proj.weight
    layer.to(device=w.device, dtype=w.dtype)
    layer.load_state_dict({f"{n}.{p}": t for n in ("q_proj", "k_proj", "v_proj", "o_proj")
                           for p, t in getattr(attn, n).named_parameters()})
    return layer.eval()


class SmolLMDecoder(nn.Module):
    """A Llama-family causal LM from transformers with ``gqa_lib`` attention layers: (batch, seq) ids -> logits.

    Build it with :meth:`from_transformers`; swap attention with :meth:`with_attention`.
    ``forward(ids)`` is the uncached causal pass; ``forward(ids, caches)`` appends ``ids`` to the caches
    (one per layer, from :meth:`new_caches`) and returns logits for the new tokens only.
    """

    def __init__(self, model, attention: list[nn.Module]):
        super().__init__()
        layers = model.model.layers
        if len(attention) != len(layers):
            raise ValueError(f"attention has {len(attention)} layers; the model has {len(layers)}")
        self.config = model.config
        self.embed_tokens = model.model.embed_tokens
        self.input_norms = nn.ModuleList(layer.input_layernorm for layer in layers)
        self.post_norms = nn.ModuleList(layer.post_attention_layernorm for layer in layers)
        self.mlps = nn.ModuleList(layer.mlp for layer in layers)
        self.attention = nn.ModuleList(attention)
        self.norm = model.model.norm
        self.lm_head = model.lm_head
        self._model = [model]  # kept for with_attention, in a list so that its modules are not registered twice

    @classmethod
    def from_transformers(cls, model) -> SmolLMDecoder:
        """The decoder with the model's own attention weights in ``GroupedQueryAttention`` layers."""
        return cls(model, [attention_from_transformers(layer.self_attn, model.config) for layer in model.model.layers])

    def with_attention(self, attention: list[nn.Module]) -> SmolLMDecoder:
        """A decoder sharing this one's embedding, norms, MLPs and head, with other attention layers."""
        return type(self)(self._model[0], list(attention))

    @property
    def n_layers(self) -> int:
        return len(self.attention)

    def new_caches(self, batch: int, max_len: int) -> list:
        """One empty cache per layer, each made by its attention layer (KVCache, latent cache, ...)."""
        check_positive_int("batch", batch)
        check_positive_int("max_len", max_len)
        return [attn.new_cache(batch, max_len) for attn in self.attention]

    def cache_nbytes(self, caches: list) -> int:
        """Bytes all the caches hold (allocated for max_len tokens)."""
        return sum(c.nbytes for c in caches)

    def _check_ids(self, ids, start: int = 0, n_new: int = 0) -> None:
        """Refuse ids that are not (batch, seq) int64 token ids of the vocabulary, or that with ``start`` tokens
        before them and ``n_new`` to come would reach past the positions the model was trained on."""
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.dtype != torch.long or ids.shape[1] == 0:
            got = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"ids={got} must be a (batch, seq) tensor of int64 token ids with seq >= 1")
        vocab = self.embed_tokens.num_embeddings
        if ids.min() < 0 or ids.max() >= vocab:
            raise ValueError(f"ids hold {int(ids.min())}..{int(ids.max())}; token ids are 0..{vocab - 1}")
        context = self.config.max_position_embeddings
        end = start + ids.shape[1] + n_new
        if end > context:
            raise ValueError(f"{start} cached + {ids.shape[1]} new ids + {n_new} to generate = {end} positions, past "
                             f"the model's context of {context:,} tokens (config.max_position_embeddings): positions "
                             f"it was never trained on; use at most {context - start - n_new} ids")

    def hidden_states(self, ids: torch.Tensor, caches: list | None = None, inputs_of: list | None = None):
        """The final normalised hidden states (batch, seq, d_model).

        ``inputs_of``: if given a list, each layer's attention input (after ``input_layernorm``) is
        appended to it, (batch, seq, d_model) each: what a calibration needs.
        """
        if caches is not None and len(caches) != self.n_layers:
            raise ValueError(f"caches has {len(caches)} entries; the model has {self.n_layers} layers")
        self._check_ids(ids, start=0 if caches is None else getattr(caches[0], "length", 0))
        x = self.embed_tokens(ids)  # (batch, seq, d_model)
        for i, attn in enumerate(self.attention):
            h = self.input_norms[i](x)
            if inputs_of is not None:
                inputs_of.append(h)
            x = x + attn(h, cache=None if caches is None else caches[i])
            x = x + self.mlps[i](self.post_norms[i](x))
        return self.norm(x)

    def forward(self, ids: torch.Tensor, caches: list | None = None) -> torch.Tensor:
        """Logits (batch, seq, vocab) for every token of ``ids``; with ``caches``, ``ids`` are the new tokens."""
        return self.lm_head(self.hidden_states(ids, caches))

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, n_new: int) -> torch.Tensor:
        """Greedy continuation with the caches: prefill ``ids`` (batch, seq), then one token a step.

        Returns the ``n_new`` new token ids, (batch, n_new).
        """
        check_positive_int("n_new", n_new)
        self._check_ids(ids, n_new=n_new)  # before the prefill: a too long request is refused at once
        caches = self.new_caches(ids.shape[0], ids.shape[1] + n_new)
        logits = self(ids, caches)[:, -1]  # (batch, vocab)
        new = []
        for _ in range(n_new):
            next_id = logits.argmax(-1, keepdim=True)  # (batch, 1)
            new.append(next_id)
            if len(new) < n_new:
                logits = self(next_id, caches)[:, -1]
        return torch.cat(new, dim=1)

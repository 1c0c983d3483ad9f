"""gqa_lib: the helper package behind the Grouped Query Attention notebook series."""

from gqa_lib.core.attention import GroupedQueryAttention, causal_mask, expand_kv, grouped_attention
from gqa_lib.core.cache_math import (
                         DTYPE_BYTES,
                         GB,
                         GIB,
                         auto_format_bytes,
                         bytes_per_token,
                         dtype_bytes,
                         elements_per_token_per_layer,
                         format_bytes,
                         kv_cache_bytes,
                         layout_cache_bytes,
                         mla_cache_bytes,
                         mla_elements_per_token_per_layer,
                         reduction_vs_mha,
)
from gqa_lib.core.checks import divisors
from gqa_lib.core.kv_cache import KVCache
from gqa_lib.core.layout import AttentionLayout, attention_kind
from gqa_lib.core.mla import MLACache, MultiHeadLatentAttention
from gqa_lib.core.rope import RotaryEmbedding
from gqa_lib.models.catalog import ModelSpec, get_model, load_models, model_names

__all__ = [
    "AttentionLayout", "DTYPE_BYTES", "GB", "GIB", "GroupedQueryAttention", "KVCache", "MLACache", "ModelSpec",
    "MultiHeadLatentAttention",
    "RotaryEmbedding", "attention_kind", "auto_format_bytes", "bytes_per_token", "causal_mask",
    "divisors", "dtype_bytes", "elements_per_token_per_layer", "expand_kv", "format_bytes", "get_model",
    "grouped_attention", "kv_cache_bytes", "layout_cache_bytes", "load_models", "mla_cache_bytes",
    "mla_elements_per_token_per_layer", "model_names", "reduction_vs_mha",
]

"""The lecture's arithmetic and layers, with no model, measurement or picture in them (the bottom layer).

- ``layout``: query heads, KV heads, group size, the kind (MHA, GQA, MQA), and the argument checks;
- ``cache_math``: bytes of a KV or latent cache; ``kv_cache``: the cache a decoder appends to;
- ``rope``: rotary position embedding; ``attention``: grouped attention and its layer;
- ``mla``: multi-head latent attention (DeepSeek-V2), explicit and absorbed;
- ``kv_head_conversion``: fewer KV heads from a trained layer (mean pooling, GQA paper);
- ``diversity``: how different heads' attention maps are; ``copies``: bytes a step copies.

Imports point only inside ``core`` (enforced by ``make lint``: import-linter's layers contract in pyproject.toml).
"""

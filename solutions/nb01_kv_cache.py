"""Solutions to notebook 01's exercises: the KV-cache formula, and a cache with sliding-window layers."""


def cache_bytes(model, tokens, batch=1, bytes_per_number=2):
    # a key and a value vector of head_dim numbers, per KV head, layer, token and sequence
    per_token_and_layer = 2 * model.n_kv_heads * model.head_dim  # head_dim from the model, not d_model / n_heads
    return per_token_and_layer * model.n_layers * tokens * batch * bytes_per_number


def sliding_window_cache_bytes(model, tokens, window, local_per_global, batch=1, bytes_per_number=2):
    n_global = model.n_layers // (local_per_global + 1)  # layer i is global when (i + 1) % (local_per_global + 1) == 0
    n_local = model.n_layers - n_global
    kept = n_global * tokens + n_local * min(tokens, window)  # tokens held, summed over layers
    return 2 * model.n_kv_heads * model.head_dim * kept * batch * bytes_per_number

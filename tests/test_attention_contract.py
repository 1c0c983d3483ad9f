"""The attention contract (tests/attention_contract.py) applied to every attention kind of the series.

One table, KINDS, says how to build, run and decode each kind; the four properties are checked on every row:
decoding with the cache equals the full causal pass, the output's shape, the dtype kept, and bad input named.
The planted failures at the end show that each check fails on a kind that breaks it.

The cache-shrinking kinds of notebook 08 (a window with sinks, integer K/V, a cache shared across layers) run
their cache inside one causal pass (``ShrunkCacheAttention``); here they are decoded for real, token by token,
by :class:`PolicyCache`: a cache that stores each token as it arrives, in the policy's number format, and drops
what the window lets go. Its keys and values are the layer's own, from one ``base.qkv`` call over the input, so a
rounding difference between a one-row and a many-row matrix product cannot flip a quantization level; that the
projections decode token by token is the plain GQA rows' contract.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from attention_contract import AttentionContract, BadInput, Kind, schedule
from hypothesis import given
from hypothesis import strategies as st

from gqa_lib.core.attention import GroupedQueryAttention, grouped_attention
from gqa_lib.core.kv_cache import KVCache
from gqa_lib.core.mla import MultiHeadLatentAttention
from gqa_lib.experiments.cache_shrink import CachePolicy, ShrunkCacheAttention, fake_quantize, shrink_layers
from gqa_lib.experiments.latent_conversion import LatentKVAttention
from gqa_lib.models.tiny_lm import TinyLM, TinyLMConfig

pytestmark = pytest.mark.usefixtures("single_thread")

F32, BF16 = torch.float32, torch.bfloat16


def randn(*shape, dtype=F32):
    return torch.randn(*shape).to(dtype)


def merge_heads(layer, out: torch.Tensor) -> torch.Tensor:
    """(batch, n_heads, seq, head_dim) through the layer's output projection: (batch, seq, d_model)."""
    b, _, s, _ = out.shape
    return layer.o_proj(out.transpose(1, 2).reshape(b, s, -1))


# ---------- MHA, GQA, MQA: GroupedQueryAttention and its KVCache ----------

def gqa_kind(name, d_model=16, n_heads=4, n_kv_heads=2, head_dim=None, bias=False, rope=True, spare=0,
             bad_inputs=()):
    def build(dtype):
        return GroupedQueryAttention(d_model, n_heads, n_kv_heads, head_dim=head_dim, bias=bias, rope=rope).to(dtype)

    return Kind(name, build,
                inputs=lambda layer, b, s, dtype: randn(b, s, d_model, dtype=dtype),
                full=lambda layer, x: layer(x),
                new_cache=lambda layer, x: layer.new_cache(x.shape[0], x.shape[1] + spare),
                step=lambda layer, cache, chunk: layer(chunk, cache),
                out_shape=lambda layer, b, s: (b, s, d_model),
                bad_inputs=tuple(bad_inputs))


def gqa_bad_inputs(n_heads, n_kv_heads, construction=False):
    layer = GroupedQueryAttention(16, n_heads, n_kv_heads)
    nan_x = torch.randn(1, 6, 16)
    nan_x[0, 3, 2] = float("nan")
    other = 4 if n_kv_heads != 4 else 2
    bad = [
        BadInput("x of rank 2", lambda: layer(torch.randn(5, 16)), ValueError, "x.shape=(5, 16)",
                 r"must be \(batch, seq, d_model=16\)"),
        BadInput("x wider than d_model", lambda: layer(torch.randn(1, 5, 17)), ValueError, "x.shape=(1, 5, 17)"),
        BadInput("x of another dtype", lambda: layer(torch.randn(1, 5, 16).double()), TypeError,
                 "x.dtype=torch.float64", r"layer's dtype torch\.float32"),
        BadInput("a nan in x, full pass", lambda: layer(nan_x), ValueError, "x holds a non-finite value",
                 "position 3"),
        BadInput("a nan in x, through the cache", lambda: layer(nan_x, layer.new_cache(1, 6)), ValueError,
                 "x holds a non-finite value", "position 3"),
        BadInput("a cache made for another layer",
                 lambda: layer(torch.randn(1, 1, 16), GroupedQueryAttention(16, 4, other).new_cache(1, 4)), ValueError,
                 f"cache (n_kv_heads={other}, head_dim=4)", "made for another layer"),
        BadInput("an MLACache", lambda: layer(torch.randn(1, 1, 16), MultiHeadLatentAttention(16, 4, 8, 4, 4)
                                              .new_cache(1, 4)), TypeError, "cache=MLACache", "must be a KVCache"),
    ]
    if construction:
        bad += [
            BadInput("n_kv_heads not dividing n_heads", lambda: GroupedQueryAttention(64, 8, 3), ValueError,
                     "n_kv_heads=3", r"must divide n_heads=8 \(valid: 1, 2, 4, 8\)"),
            BadInput("d_model not divisible by n_heads", lambda: GroupedQueryAttention(30, 8, 2), ValueError,
                     "d_model=30", "pass head_dim"),
            BadInput("odd head_dim under RoPE", lambda: GroupedQueryAttention(21, 3, 1), ValueError,
                     "head_dim=7", "must be even"),
        ]
    return bad


# ---------- grouped_attention, the function, with a KVCache ----------

def function_kind():
    n_heads, n_kv, d = 4, 2, 8

    def step(_, cache, qkv):
        q, k, v = qkv
        k_all, v_all = cache.append(k, v)
        return grouped_attention(q, k_all, v_all)

    q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    k_inf = k.clone()
    k_inf[0, 1, 3, 0] = float("inf")
    bad = [
        BadInput("n_kv_heads not dividing n_heads", lambda: grouped_attention(q, *torch.randn(2, 1, 3, 5, 8)),
                 ValueError, "n_kv_heads=3", "must divide n_heads=4"),
        BadInput("mismatched head_dim", lambda: grouped_attention(q, *torch.randn(2, 1, 2, 5, 6)), ValueError,
                 "k.shape=(1, 2, 5, 6)", r"\(1, n_kv_heads, s_k, 8\)"),
        BadInput("an inf in k", lambda: grouped_attention(q, k_inf, v), ValueError, "k holds a non-finite value",
                 "position 3"),
        BadInput("3-D q, k, v", lambda: grouped_attention(q[0], k[0], v[0]), ValueError, "q, k, v must be 4-D"),
        BadInput("k in another dtype", lambda: grouped_attention(q, k.double(), v), TypeError,
                 "k.dtype=torch.float64", "must be the same"),
        BadInput("more queries than keys", lambda: grouped_attention(q, k[:, :, :2], v[:, :, :2]), ValueError,
                 "q.shape[2]=5", r"k\.shape\[2\]=2 keys"),
        BadInput("a key for the cache with other heads", lambda: KVCache(1, 2, 8, 5).append(k[:, :1], v[:, :1]),
                 ValueError, "k.shape=(1, 1, 5, 8)", "does not match the cache"),
    ]
    return Kind("grouped_attention + KVCache", build=lambda dtype: None,
                inputs=lambda _, b, s, dtype: (randn(b, n_heads, s, d, dtype=dtype), randn(b, n_kv, s, d, dtype=dtype),
                                               randn(b, n_kv, s, d, dtype=dtype)),
                full=lambda _, qkv: grouped_attention(*qkv),
                new_cache=lambda _, qkv: KVCache(qkv[1].shape[0], n_kv, d, qkv[1].shape[2], dtype=qkv[1].dtype),
                step=step, out_shape=lambda _, b, s: (b, n_heads, s, d),
                take=lambda qkv, start, stop: tuple(t[:, :, start:stop] for t in qkv), out_seq_dim=2,
                bad_inputs=tuple(bad))


# ---------- Multi-head latent attention, explicit and absorbed ----------

def mla_kind(mode, d_q, bad_inputs=()):
    def build(dtype):
        layer = MultiHeadLatentAttention(32, 4, d_c=16, d_rope=8, head_dim=12, v_head_dim=10, d_q=d_q)
        with torch.no_grad():  # norms start at weight 1; make them matter
            for norm in (layer.kv_norm, getattr(layer, "q_norm", None)):
                if norm is not None:
                    norm.weight.uniform_(0.5, 1.5)
        return layer.to(dtype)

    latent = "" if d_q is not None else ", no query latent"
    return Kind(f"MLA {mode}{latent}", build,
                inputs=lambda layer, b, s, dtype: randn(b, s, 32, dtype=dtype),
                full=lambda layer, x: layer(x, mode=mode),
                new_cache=lambda layer, x: layer.new_cache(x.shape[0], x.shape[1]),
                step=lambda layer, cache, chunk: layer(chunk, cache=cache, mode=mode),
                out_shape=lambda layer, b, s: (b, s, 32), bad_inputs=tuple(bad_inputs),
                reference=lambda layer, x: layer(x, mode="explicit"))  # both forms decode to the explicit pass


def mla_bad_inputs(mode, construction=False):
    layer = MultiHeadLatentAttention(32, 4, 16, 8, 12)
    bad = [
        BadInput("x one too narrow", lambda: layer(torch.randn(1, 2, 31), mode=mode), ValueError,
                 "x.shape=(1, 2, 31)", r"must be \(batch, seq, d_model=32\)"),
        BadInput("x of rank 2", lambda: layer(torch.randn(2, 32), mode=mode), ValueError, "x.shape=(2, 32)"),
        BadInput("a cache that is not an MLACache", lambda: layer(torch.randn(1, 1, 32), cache=object(), mode=mode),
                 TypeError, "cache=object", "must be an MLACache"),
    ]
    if not construction:
        return bad
    args = {"d_model": 32, "n_heads": 4, "d_c": 16, "d_rope": 8, "head_dim": 12}
    for kwargs, message in [({"d_rope": 7}, "d_rope=7 must be even"),
                            ({"d_rope": 0}, "d_rope=0 must be a positive integer"),
                            ({"d_c": 0}, "d_c=0 must be a positive integer"),
                            ({"n_heads": -2}, "n_heads=-2 must be a positive integer"),
                            ({"d_q": 0}, "d_q=0 must be a positive integer"),
                            ({"v_head_dim": 0}, "v_head_dim=0 must be a positive integer")]:
        name = next(iter(kwargs))
        bad.append(BadInput(f"{name}={kwargs[name]}", lambda kw=args | kwargs: MultiHeadLatentAttention(**kw),
                            ValueError, f"{name}={kwargs[name]}", message))
    bad.append(BadInput("an unknown mode", lambda: layer(torch.randn(1, 2, 32), mode="fast"), ValueError,
                        "mode='fast'", r"is not known \(valid: explicit, absorbed\)"))
    return bad


# ---------- a latent KV cache (a GQA layer converted, gqa_lib.experiments.latent_conversion) ----------

def latent_kv_kind():
    layer = LatentKVAttention(16, 4, 2, 8, rank=12)
    bad = [
        BadInput("n_kv_heads not dividing n_heads", lambda: LatentKVAttention(16, 4, 3, 8, 12), ValueError,
                 "n_kv_heads=3", "must divide n_heads=4"),
        BadInput("rank 0", lambda: LatentKVAttention(16, 4, 2, 8, 0), ValueError, "rank=0", "positive integer"),
        BadInput("x of rank 2", lambda: layer(torch.randn(3, 16)), ValueError, "x.shape=(3, 16)"),
    ]
    return Kind("latent KV (converted GQA)", lambda dtype: LatentKVAttention(16, 4, 2, 8, rank=12).to(dtype),
                inputs=lambda layer, b, s, dtype: randn(b, s, 16, dtype=dtype),
                full=lambda layer, x: layer(x),
                new_cache=lambda layer, x: layer.new_cache(x.shape[0], x.shape[1]),
                step=lambda layer, cache, chunk: layer(chunk, cache),
                out_shape=lambda layer, b, s: (b, s, 16), bad_inputs=tuple(bad))


# ---------- a window with sinks, integer K/V, a cache shared across layers (notebook 08) ----------

SHRINK_D_MODEL, SHRINK_HEADS, SHRINK_KV, SHRINK_HEAD_DIM, SHRINK_SEQ = 48, 6, 2, 64, 21


class PolicyCache:
    """What a decoder under a CachePolicy holds, filled one token at a time.

    Each token is stored as it arrives: rounded to bf16, or quantized (scale and minimum per head of the token)
    with axis 'token'. With axis 'channel' (KIVI) the newest block is held in bf16; once its last token has been
    attended it is quantized, keys per channel over the block, values per token, from the numbers as projected.
    With a window, only the first ``sinks`` and the last ``window`` tokens stay.
    """

    def __init__(self, policy: CachePolicy, head_dim: int):
        self.policy, self.head_dim = policy, head_dim
        self.positions, self.k, self.v = [], [], []  # what is held: (batch, n_kv_heads, 1, head_dim) per token
        self.block = []  # KIVI: keys and values of the unfinished block, as projected
        self.length = 0  # tokens seen

    def _store(self, t: torch.Tensor) -> torch.Tensor:
        p = self.policy
        if p.bits is None or p.axis == "channel":
            return t.to(torch.bfloat16).to(t.dtype)
        return fake_quantize(t, p.bits, group=self.head_dim)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one token's key and value, drop what the window lets go; return what is held, oldest first."""
        p, t = self.policy, self.length
        self.positions.append(t)
        self.k.append(self._store(k))
        self.v.append(self._store(v))
        if p.bits is not None and p.axis == "channel":
            self.block.append((k, v))
        self.length += 1
        if p.window is not None:
            keep = [i for i, pos in enumerate(self.positions) if pos < p.sinks or pos > t - p.window]
            self.positions, self.k, self.v = ([held[i] for i in keep] for held in (self.positions, self.k, self.v))
        return torch.cat(self.k, 2), torch.cat(self.v, 2)

    def attended(self) -> None:
        """The newest token has been attended: a KIVI block that is now full is quantized."""
        p = self.policy
        if p.bits is None or p.axis != "channel" or len(self.block) < p.block:
            return
        k = fake_quantize(torch.cat([k for k, _ in self.block], 2), p.bits, dim=-2, group=p.block)
        v = fake_quantize(torch.cat([v for _, v in self.block], 2), p.bits, group=self.head_dim)
        first = self.length - p.block
        for i, pos in enumerate(self.positions):
            if pos >= first:
                self.k[i], self.v[i] = k[:, :, pos - first:pos - first + 1], v[:, :, pos - first:pos - first + 1]
        self.block = []


@dataclasses.dataclass
class PolicyDecoder:
    """Decoder state for shrunk layers: the input, its projections by the lowest layer, and the one cache."""

    x: torch.Tensor
    qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    cache: PolicyCache

    @property
    def length(self) -> int:
        return self.cache.length


def policy_decoder(layers, x) -> PolicyDecoder:
    lowest = layers[0] if isinstance(layers, list) else layers
    return PolicyDecoder(x, lowest.base.qkv(x), PolicyCache(lowest.policy, lowest.base.head_dim))


def policy_step(layers, state: PolicyDecoder, chunk: torch.Tensor) -> torch.Tensor:
    """Decode ``chunk`` token by token; with a list, every layer above the lowest reads the lowest layer's cache."""
    layers = layers if isinstance(layers, list) else [layers]
    start = state.length
    assert torch.equal(chunk, state.x[:, start:start + chunk.shape[1]]), "chunks must come in order"
    q, k, v = state.qkv
    outs = []
    for t in range(start, start + chunk.shape[1]):
        k_held, v_held = state.cache.append(k[:, :, t:t + 1], v[:, :, t:t + 1])
        y = merge_heads(layers[0].base, grouped_attention(q[:, :, t:t + 1], k_held, v_held))
        for upper in layers[1:]:  # cross-layer sharing: own queries, the cache of the layer below
            q_up = upper.base.qkv(y, start_pos=t)[0]
            y = merge_heads(upper.base, grouped_attention(q_up, k_held, v_held))
        state.cache.attended()
        outs.append(y)
    return torch.cat(outs, 1)


def shrink_base(dtype, seed=0):
    torch.manual_seed(seed)
    return GroupedQueryAttention(SHRINK_D_MODEL, SHRINK_HEADS, SHRINK_KV, head_dim=SHRINK_HEAD_DIM).to(dtype)


def shrunk_kind(name, policy: CachePolicy, share: bool = False, bad_inputs=()):
    def build(dtype):
        if share:
            return shrink_layers([shrink_base(dtype, 0), shrink_base(dtype, 1)], policy, share_every=2)
        return ShrunkCacheAttention(shrink_base(dtype), policy)

    def full(layers, x):
        if not share:
            return layers(x)
        return layers[1](layers[0](x))  # the upper layer's queries from the lower's output, its keys from the lower

    return Kind(name, build,
                inputs=lambda _, b, s, dtype: randn(b, s, SHRINK_D_MODEL, dtype=dtype),
                full=full, new_cache=policy_decoder, step=policy_step,
                out_shape=lambda _, b, s: (b, s, SHRINK_D_MODEL), bad_inputs=tuple(bad_inputs))


def shrink_bad_inputs(which: str):
    layer = ShrunkCacheAttention(shrink_base(F32))
    if which == "window":
        return [
            BadInput("sinks without a window", lambda: CachePolicy(sinks=4), ValueError, "sinks=4", "needs a window"),
            BadInput("window 0", lambda: CachePolicy(window=0), ValueError, "window=0", "positive integer"),
            BadInput("x of another width", lambda: layer(torch.randn(1, 3, 47)), ValueError, "x.shape=(1, 3, 47)"),
            BadInput("a cache passed in", lambda: layer(torch.randn(1, 3, 48), cache=object()), ValueError,
                     "cache=None", "uncached pass only"),
            BadInput("a base that is no attention layer", lambda: ShrunkCacheAttention(torch.nn.Linear(2, 2)),
                     TypeError, "base=Linear", "GroupedQueryAttention"),
            BadInput("a policy that is no CachePolicy", lambda: ShrunkCacheAttention(shrink_base(F32), "window 8"),
                     TypeError, "policy=str", "must be a CachePolicy"),
        ]
    if which == "bits":
        return [
            BadInput("3 bits", lambda: CachePolicy(bits=3), ValueError, "bits=3", r"one of \(8, 4, 2\)"),
            BadInput("an unknown axis", lambda: CachePolicy(bits=8, axis="head"), ValueError, "axis='head'",
                     "must be one of"),
            BadInput("a block of 0 tokens", lambda: CachePolicy(bits=4, axis="channel", block=0), ValueError,
                     "block=0", "positive integer"),
        ]
    return [
        BadInput("share_from not a layer", lambda: ShrunkCacheAttention(shrink_base(F32), share_from=3), TypeError,
                 "share_from=int", "the layer below"),
        BadInput("share_every 0", lambda: shrink_layers([shrink_base(F32)], share_every=0), ValueError,
                 "share_every=0", "positive integer"),
    ]


# ---------- TinyLM: GQA blocks in a model, token ids in, logits out ----------

def tiny_lm_kind():
    cfg = TinyLMConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_len=48)
    model = TinyLM(cfg)
    bad = [BadInput(f"{name}={value!r}", lambda kw={name: value}: TinyLMConfig(**kw), error, f"{name}={value!r}",
                    message)
           for name, value, error, message in [
               ("n_kv_heads", 3, ValueError, r"n_kv_heads=3 must divide n_heads=8 \(valid: 1, 2, 4, 8\)"),
               ("d_model", 100, ValueError, r"d_model=100 must be divisible by n_heads=8"),
               ("d_model", 24, ValueError, r"d_model=24 / n_heads=8 = head_dim 3 must be even for RoPE"),
               ("n_layers", 0, ValueError, r"n_layers=0 must be a positive integer"),
               ("vocab_size", 256.0, TypeError, r"vocab_size=256\.0 must be a positive integer"),
               ("n_heads", True, TypeError, r"n_heads=True must be a positive integer \(got bool\)")]]
    bad += [
        BadInput("ids of rank 1", lambda: model(torch.zeros(4, dtype=torch.long)), ValueError, "idx.shape=(4,)",
                 r"must be \(batch, seq\)"),
        BadInput("float ids", lambda: model(torch.rand(1, 4)), TypeError, "idx.dtype=torch.float32", "integer dtype"),
        BadInput("an id past the vocabulary", lambda: model(torch.tensor([[1, 300]])), ValueError,
                 "idx holds token ids 1..300", r"valid: 0\.\.255"),
        BadInput("one KVCache for all layers", lambda: model(torch.zeros(1, 2, dtype=torch.long),
                                                             model.new_caches(1)[0]), TypeError, "caches=KVCache"),
    ]
    return Kind("TinyLM (GQA blocks)", lambda dtype: TinyLM(cfg).to(dtype),
                inputs=lambda model, b, s, dtype: torch.randint(0, cfg.vocab_size, (b, s)),
                full=lambda model, idx: model(idx),
                new_cache=lambda model, idx: model.new_caches(idx.shape[0], idx.shape[1]),
                step=lambda model, caches, chunk: model(chunk, caches),
                out_shape=lambda model, b, s: (b, s, cfg.vocab_size), bad_inputs=tuple(bad))


KINDS = [
    gqa_kind("MHA", n_kv_heads=4, bad_inputs=gqa_bad_inputs(4, 4)),
    gqa_kind("GQA", n_kv_heads=2, bad_inputs=gqa_bad_inputs(4, 2, construction=True)),
    gqa_kind("MQA", n_kv_heads=1, bad_inputs=gqa_bad_inputs(4, 1)),
    gqa_kind("GQA, bias, no RoPE", n_kv_heads=2, bias=True, rope=False),
    function_kind(),
    mla_kind("explicit", d_q=24, bad_inputs=mla_bad_inputs("explicit", construction=True)),
    mla_kind("absorbed", d_q=24, bad_inputs=mla_bad_inputs("absorbed")),
    mla_kind("explicit", d_q=None),
    mla_kind("absorbed", d_q=None),
    latent_kv_kind(),
    shrunk_kind("bf16 cache, every token", CachePolicy()),
    *(shrunk_kind(f"window {w}" + (f" + {s} sinks" if s else ""), CachePolicy(window=w, sinks=s),
                  bad_inputs=shrink_bad_inputs("window") if (w, s) == (5, 2) else ())
      for w, s in [(5, 0), (5, 2), (1, 0), (8, 3)]),
    shrunk_kind("int8 per token", CachePolicy(bits=8), bad_inputs=shrink_bad_inputs("bits")),
    shrunk_kind("int4 per token", CachePolicy(bits=4)),
    shrunk_kind("int4 per channel (KIVI, blocks of 8)", CachePolicy(bits=4, axis="channel", block=8)),
    shrunk_kind("window 6 + 2 sinks, int8 per token", CachePolicy(window=6, sinks=2, bits=8)),
    shrunk_kind("shared across 2 layers", CachePolicy(), share=True, bad_inputs=shrink_bad_inputs("share")),
    shrunk_kind("shared across 2 layers, window 5 + 1 sink, int8", CachePolicy(window=5, sinks=1, bits=8),
                share=True),
    tiny_lm_kind(),
]
SHRUNK = {k.name for k in KINDS if k.new_cache is policy_decoder}


def seq_of(kind: Kind) -> int:
    return SHRINK_SEQ if kind.name in SHRUNK else AttentionContract.SEQ


DECODE_CASES = [pytest.param(kind, dtype, prefill, id=f"{kind}-{str(dtype)[6:]}-prefill {prefill}")
                for kind in KINDS for dtype in kind.dtypes for prefill in (1, 4)]
BAD_CASES = [pytest.param(bad, id=f"{kind}-{bad.label}") for kind in KINDS for bad in kind.bad_inputs]


# ---------- the four properties on every kind ----------

@pytest.mark.parametrize("kind, dtype, prefill", DECODE_CASES)
def test_decoding_with_the_cache_equals_the_full_pass(kind, dtype, prefill):
    """Prefill 1: token by token from the first token; prefill 4: four tokens in one step, then one at a time."""
    AttentionContract(kind).check_decode_equals_full(dtype, schedule(seq_of(kind), prefill), seq=seq_of(kind))


@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_output_shape(kind):
    AttentionContract(kind).check_output_shape(seq=seq_of(kind))


@pytest.mark.parametrize("kind, dtype", [pytest.param(k, d, id=f"{k}-{str(d)[6:]}") for k in KINDS for d in k.dtypes])
def test_dtype_is_kept(kind, dtype):
    AttentionContract(kind).check_dtype_kept(dtype)


@pytest.mark.parametrize("bad", BAD_CASES)
def test_bad_input_is_named(bad):
    AttentionContract.check_bad_input(bad)


def test_the_table_holds_every_kind_of_the_series():
    names = {k.name for k in KINDS}
    wanted = {"MHA", "GQA", "MQA", "MLA explicit", "MLA absorbed", "window 5 + 2 sinks", "int8 per token",
              "int4 per channel (KIVI, blocks of 8)", "shared across 2 layers", "grouped_attention + KVCache",
              "latent KV (converted GQA)", "TinyLM (GQA blocks)"}
    assert wanted <= names, f"missing from the contract's table: {sorted(wanted - names)}"
    assert len(names) == len(KINDS), "two kinds share a name"
    assert all(BF16 in k.dtypes and F32 in k.dtypes for k in KINDS)
    # every kind that checks its input has its bad inputs in the table
    families = {"MHA", "GQA", "MQA", "grouped_attention + KVCache", "MLA explicit", "MLA absorbed",
                "latent KV (converted GQA)", "window 5 + 2 sinks", "int8 per token", "shared across 2 layers",
                "TinyLM (GQA blocks)"}
    assert all(k.bad_inputs for k in KINDS if k.name in families)


# ---------- GQA layouts drawn at random: any n_kv_heads, head_dim, bias, RoPE on or off, any chunks ----------

@st.composite
def gqa_layouts(draw):
    n_kv, group, head_dim = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.sampled_from([2, 4, 8]))
    kind = gqa_kind("GQA drawn", d_model=draw(st.sampled_from([8, 12, 16])), n_heads=n_kv * group, n_kv_heads=n_kv,
                    head_dim=head_dim, bias=draw(st.booleans()), rope=draw(st.booleans()),
                    spare=2)  # room to spare: the cache need not be full
    return kind, (n_kv, head_dim), draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(0, 2**16))


@given(gqa_layouts(), st.lists(st.integers(1, 3), min_size=1, max_size=6))
def test_gqa_layouts_drawn_at_random_decode_as_the_full_pass(layout, chunk_sizes):
    """MHA, GQA and MQA of any shape, with and without bias and RoPE: token by token, then in random chunks."""
    kind, (n_kv, head_dim), batch, seq, seed = layout
    contract = AttentionContract(kind, seed)
    cache = contract.check_decode_equals_full(F32, schedule(seq), batch=batch, seq=seq)  # token by token
    assert cache.k.shape == (batch, n_kv, seq + 2, head_dim)  # only the KV heads are stored
    chunks, left = [], seq
    for size in chunk_sizes + [seq]:  # the last chunk takes whatever is left
        if left:
            chunks.append(min(size, left))
            left -= chunks[-1]
    contract.check_decode_equals_full(F32, chunks, batch=batch, seq=seq)


# ---------- planted failures: a kind that breaks a property fails its check ----------

GQA = next(k for k in KINDS if k.name == "GQA")


def decode_with_query_position(offset: int):
    """A GQA decode step that rotates the new queries to their position + ``offset`` (the keys stay right)."""

    def step(layer, cache, chunk):
        start = cache.length
        q = layer.qkv(chunk, start + offset)[0]
        _, k, v = layer.qkv(chunk, start)
        k, v = cache.append(k, v)
        return merge_heads(layer, grouped_attention(q, k, v))

    return step


def test_a_decode_with_the_query_one_position_off_fails_the_contract():
    right = dataclasses.replace(GQA, step=decode_with_query_position(0))
    AttentionContract(right).check_decode_equals_full()  # the step written out here is right when the offset is 0
    planted = dataclasses.replace(GQA, name="GQA, query one position ahead", step=decode_with_query_position(1))
    with pytest.raises(AssertionError, match="query one position ahead: decoding in chunks .* differ beyond"):
        AttentionContract(planted).check_decode_equals_full()


def test_a_window_one_token_short_fails_the_contract():
    """A decoder that keeps one token fewer than the layer's window: the off-by-one a rolling cache invites."""
    kind = next(k for k in KINDS if k.name == "window 5 + 2 sinks")

    def short_window(layer, x):
        state = policy_decoder(layer, x)
        state.cache.policy = CachePolicy(window=4, sinks=2)
        return state

    planted = dataclasses.replace(kind, name="window one short", new_cache=short_window)
    with pytest.raises(AssertionError, match="window one short: decoding .* differ beyond"):
        AttentionContract(planted).check_decode_equals_full(seq=SHRINK_SEQ)


def test_a_wrong_shape_and_a_lost_dtype_fail_the_contract():
    heads_out = dataclasses.replace(GQA, name="heads out", full=lambda layer, x: layer.qkv(x)[0])
    with pytest.raises(AssertionError, match=r"heads out: batch 2, 7 tokens gave \(2, 4, 7, 4\), not \(2, 7, 16\)"):
        AttentionContract(heads_out).check_output_shape()
    one_row = dataclasses.replace(GQA, name="one row", step=lambda layer, cache, chunk: layer(chunk, cache)[:1])
    with pytest.raises(AssertionError, match="one row: a 1-token step gave"):
        AttentionContract(one_row).check_decode_equals_full()
    upcast = dataclasses.replace(GQA, name="upcast", full=lambda layer, x: layer(x).float())
    with pytest.raises(AssertionError, match="upcast: the full pass in torch.bfloat16 gave torch.float32"):
        AttentionContract(upcast).check_dtype_kept(BF16)


def test_a_bad_input_that_is_not_named_or_not_refused_fails_the_contract():
    def unnamed():
        raise ValueError("bad shape")

    with pytest.raises(AssertionError, match="does not name 'x.shape'"):
        AttentionContract.check_bad_input(BadInput("unnamed", unnamed, ValueError, "x.shape"))
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        AttentionContract.check_bad_input(BadInput("accepted", lambda: None, ValueError, "x"))
    with pytest.raises(AssertionError, match="not a ValueError or TypeError"):
        AttentionContract.check_bad_input(BadInput("a KeyError", lambda: {}["x"], KeyError, "x"))

"""Token eviction (gqa_lib.experiments.token_eviction): the one-pass simulation against a decoder with a real cache.

The reference decoders below are written here, independently and simply: per sequence and per KV head, a list of
the positions held and a tensor of their keys and values, rows dropped when a token is evicted and appended as
it arrives; the choices are made with Python's min, max and sorted over dicts of scores, never with the module's
tensors. Every policy's pass must equal its decoder within the fp32 tolerance of the attention contract, and the
tokens held must be the same number at every step. Planted wrong policies show that the comparison can fail.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch
from attention_contract import AttentionContract, BadInput, assert_agree

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.core.cache_math import ElementType
from gqa_lib.experiments.cache_shrink import ShrunkCacheAttention, visible
from gqa_lib.experiments.token_eviction import (
    H2O,
    EvictedCacheAttention,
    KeyNorm,
    OracleTopK,
    SnapKV,
    evicted_attention,
    kv_bytes,
)

pytestmark = pytest.mark.usefixtures("single_thread")

F32 = torch.float32
D_MODEL, HEADS, KV_HEADS, HEAD_DIM, BATCH, SEQ = 48, 6, 2, 8, 2, 30
GROUP = HEADS // KV_HEADS


def layer_and_input(seed: int = 0, seq: int = SEQ):
    """A tiny GQA layer and an input scaled by 2: attention peaked enough that query heads disagree (at scale 1
    a random layer's attention is nearly flat, H2O's scores mostly count how long a token has been there, and
    every query head of a group evicts the same token)."""
    torch.manual_seed(seed)
    layer = GroupedQueryAttention(D_MODEL, HEADS, KV_HEADS, head_dim=HEAD_DIM)
    return layer, 2 * torch.randn(BATCH, seq, D_MODEL)


class RealCache:
    """One KV head's cache for one sequence: the positions held, with their keys and values, in arrival order."""

    def __init__(self):
        self.pos, self.k, self.v = [], torch.zeros(0, HEAD_DIM), torch.zeros(0, HEAD_DIM)

    def append(self, p, k, v):
        self.pos.append(p)
        self.k, self.v = torch.cat([self.k, k[None]]), torch.cat([self.v, v[None]])

    def keep_only(self, wanted):
        rows = [i for i, p in enumerate(self.pos) if p in wanted]
        self.pos, self.k, self.v = [self.pos[i] for i in rows], self.k[rows], self.v[rows]

    def attend(self, q):
        """(head_dim,) query -> (output (head_dim,), {position: weight})."""
        w = torch.softmax(self.k @ q / math.sqrt(HEAD_DIM), 0)
        return w @ self.v, dict(zip(self.pos, w.tolist(), strict=True))


def choosers(kv, scoring):
    """The query heads that decide together: the whole group, or each query head alone."""
    heads = list(range(kv * GROUP, (kv + 1) * GROUP))
    return [[h] for h in heads] if scoring == "query" else [heads]


def join(values, scoring):
    return max(values) if scoring == "kv_max" else sum(values)


def merge(layer, heads_out):
    """(batch, n_heads, seq, head_dim) -> (batch, seq, d_model) through the output projection."""
    b, _, s, _ = heads_out.shape
    return layer.o_proj(heads_out.transpose(1, 2).reshape(b, s, -1))


@torch.no_grad()
def decode_evicting(layer, x, budget, recent, scoring="kv_sum", by_norm=False, pick=min):
    """H2O (or, ``by_norm``, KeyNorm) decoded token by token: each chooser keeps at most ``budget`` tokens and, when
    full, evicts with ``pick`` (min: the right rule) over (score, position) among tokens at t - recent or older."""
    q, k, v = layer.qkv(x)
    out, stored = torch.zeros_like(q), torch.zeros(BATCH, KV_HEADS, x.shape[1], dtype=torch.long)
    for b in range(BATCH):
        for kv in range(KV_HEADS):
            groups = choosers(kv, scoring)
            kept = [set() for _ in groups]
            received = defaultdict(float)  # (query head, position) -> attention received so far
            cache = RealCache()
            for t in range(x.shape[1]):
                for members, mine in zip(groups, kept, strict=True):
                    if len(mine) >= budget:
                        old = [j for j in mine if j <= t - recent]
                        scores = [-float(k[b, kv, j].norm()) if by_norm else
                                  join([received[h, j] for h in members], scoring) for j in old]
                        mine.remove(pick(zip(scores, old, strict=True))[1])  # (score, position): the earliest on ties
                    mine.add(t)
                cache.keep_only(set().union(*kept))
                cache.append(t, k[b, kv, t], v[b, kv, t])
                stored[b, kv, t] = len(cache.pos)
                for h in range(kv * GROUP, (kv + 1) * GROUP):
                    out[b, h, t], weights = cache.attend(q[b, h, t])
                    for j, w in weights.items():
                        received[h, j] += w
    return merge(layer, out), stored


def pool(votes, kernel, pooling):
    """SnapKV's pooling, by hand: stride 1, padding kernel // 2; max over the tokens there, or their sum / kernel."""
    r = kernel // 2
    near = [[votes[i] for i in range(j - r, j + r + 1) if 0 <= i < len(votes)] for j in range(len(votes))]
    return [max(n) if pooling == "max" else sum(n) / kernel for n in near]


@torch.no_grad()
def decode_snapkv(layer, x, policy: SnapKV):
    """A prefill of the prompt, the prompt's cache cut once, then every later token appended and kept."""
    p, w, budget = policy.prompt, policy.window, policy.budget
    q, k, v = layer.qkv(x)
    out, stored = torch.zeros_like(q), torch.zeros(BATCH, KV_HEADS, x.shape[1], dtype=torch.long)
    stored[..., :p] = torch.arange(1, p + 1)
    for b in range(BATCH):
        for kv in range(KV_HEADS):
            kept = set(range(p))
            if p > budget:
                pooled = {}
                for h in range(kv * GROUP, (kv + 1) * GROUP):
                    votes = [0.0] * (p - w)
                    for i in range(p - w, p):
                        weights = torch.softmax(k[b, kv, :i + 1] @ q[b, h, i] / math.sqrt(HEAD_DIM), 0)
                        for j in range(p - w):
                            votes[j] += float(weights[j])
                    pooled[h] = pool(votes, policy.kernel, policy.pooling)
                kept = set(range(p - w, p))
                for members in choosers(kv, policy.scoring):
                    ranked = sorted(range(p - w), key=lambda j, m=members: (-join([pooled[h][j] for h in m],
                                                                                   policy.scoring), j))
                    kept |= set(ranked[:budget - w])
            cache = RealCache()
            for j in sorted(kept):
                cache.append(j, k[b, kv, j], v[b, kv, j])
            for t in range(p, x.shape[1]):
                cache.append(t, k[b, kv, t], v[b, kv, t])
                stored[b, kv, t] = len(cache.pos)
                for h in range(kv * GROUP, (kv + 1) * GROUP):
                    out[b, h, t] = cache.attend(q[b, h, t])[0]
    prefill = layer(x[:, :p])  # the prompt's own queries read the whole prompt, uncut
    return torch.cat([prefill, merge(layer, out)[:, p:]], 1), stored


@torch.no_grad()
def decode_top_k(layer, x, policy: OracleTopK, largest=True):
    """Every token stored; each query head at step t attends over only its chosen keys: the top k by its own score,
    or by its group's summed or maxed full attention weights."""
    q, k, v = layer.qkv(x)
    s = x.shape[1]
    out, read = torch.zeros_like(q), torch.zeros(BATCH, KV_HEADS, s, dtype=torch.long)
    for b in range(BATCH):
        for kv in range(KV_HEADS):
            for t in range(s):
                logits = {h: (k[b, kv, :t + 1] @ q[b, h, t] / math.sqrt(HEAD_DIM)).tolist()
                          for h in range(kv * GROUP, (kv + 1) * GROUP)}
                full = {h: torch.softmax(torch.tensor(row), 0).tolist() for h, row in logits.items()}
                union = set()
                for members in choosers(kv, policy.scoring):
                    score = {j: join([full[h][j] for h in members], policy.scoring) for j in range(t + 1)}
                    top = sorted(score, key=score.get, reverse=largest)[:policy.k]
                    union |= set(top)
                    for h in members:
                        weights = torch.softmax(torch.tensor([logits[h][j] for j in top]), 0)
                        out[b, h, t] = weights @ v[b, kv, top]
                read[b, kv, t] = len(union)
    return merge(layer, out), read


EVICTING = [H2O(8, 2), H2O(8, 0), H2O(8, 3, "kv_max"), H2O(8, 2, "query"), H2O(5, 5), KeyNorm(8, 2), KeyNorm(6, 0)]
SNAPKV = [SnapKV(10, 20, 4), SnapKV(10, 20, 4, 3, "max"), SnapKV(9, 24, 3, 5, "max", "query"),
          SnapKV(10, 20, 4, 1, "avg", "kv_max"), SnapKV(7, 22, 7), SnapKV(16, 16, 4)]
ORACLE = [OracleTopK(5), OracleTopK(5, "kv_sum"), OracleTopK(1), OracleTopK(4, "kv_max")]


def reference(layer, x, policy):
    """(output, tokens stored per KV head per step, tokens read) as the real-cache decoder gives them."""
    if isinstance(policy, OracleTopK):
        out, read = decode_top_k(layer, x, policy)
        return out, torch.arange(1, x.shape[1] + 1).expand(BATCH, KV_HEADS, -1), read
    if isinstance(policy, SnapKV):
        out, stored = decode_snapkv(layer, x, policy)
    else:
        out, stored = decode_evicting(layer, x, policy.budget, policy.recent, getattr(policy, "scoring", "kv_sum"),
                                      by_norm=isinstance(policy, KeyNorm))
    return out, stored, stored


@pytest.mark.parametrize("policy", EVICTING + SNAPKV + ORACLE, ids=repr)
def test_the_one_pass_equals_a_decoder_with_a_real_cache(policy):
    layer, x = layer_and_input()
    got = evicted_attention(layer, x, policy)
    out, stored, read = reference(layer, x, policy)
    assert torch.equal(got.stored, stored), f"{policy}: tokens stored per step differ from the real cache's"
    assert torch.equal(got.read, read), f"{policy}: tokens read per step differ from the real cache's"
    assert_agree(got.out, out, F32, f"{policy}: the one pass against the real cache")


@pytest.mark.parametrize("policy", [H2O(SEQ, 3), H2O(SEQ + 5, 0, "query"), KeyNorm(SEQ, 4), SnapKV(SEQ, SEQ, 6),
                                    SnapKV(24, 20, 4, scoring="query"), OracleTopK(SEQ)], ids=repr)
def test_a_budget_past_the_sequence_is_the_unshrunk_layer(policy):
    layer, x = layer_and_input()
    got = evicted_attention(layer, x, policy)
    assert torch.equal(got.reads, visible(SEQ).expand(BATCH, HEADS, SEQ, SEQ)), f"{policy}: something was evicted"
    assert torch.equal(got.stored, torch.arange(1, SEQ + 1).expand(BATCH, KV_HEADS, SEQ))
    with torch.no_grad():
        assert_agree(got.out, layer(x), F32, f"{policy} against the layer itself")


@pytest.mark.parametrize("policy", [H2O(8, 2), H2O(8, 0, "kv_max"), KeyNorm(6, 1), OracleTopK(5, "kv_sum")], ids=repr)
def test_scoring_per_kv_head_keeps_the_budget(policy):
    got = evicted_attention(*layer_and_input(), policy)
    budget = getattr(policy, "budget", getattr(policy, "k", None))
    assert torch.equal(got.read, torch.arange(1, SEQ + 1).clamp(max=budget).expand(BATCH, KV_HEADS, SEQ))


def test_snapkv_per_kv_head_keeps_the_budget_of_the_prompt_and_every_token_after():
    got = evicted_attention(*layer_and_input(), SnapKV(10, 20, 4))
    after = torch.arange(1, SEQ - 20 + 1)  # tokens generated so far, at steps 20 .. SEQ - 1
    assert torch.equal(got.stored[..., 20:], (10 + after).expand(BATCH, KV_HEADS, -1))


@pytest.mark.parametrize("policy", [H2O(8, 2, "query"), H2O(6, 0, "query"), SnapKV(9, 24, 3, 5, "max", "query"),
                                    OracleTopK(5)], ids=repr)
def test_scoring_per_query_head_stores_the_union(policy):
    """The union of a group's choices: at least the budget once the cache is full, at most group_size x budget,
    and larger than the budget somewhere (its size equals the real cache's in the decoder test above)."""
    got = evicted_attention(*layer_and_input(), policy)
    budget = getattr(policy, "budget", getattr(policy, "k", None))
    full = got.read[..., budget:]  # steps at which at least `budget` tokens exist
    assert bool((full >= budget).all()) and bool((got.read <= GROUP * budget + SEQ).all())
    if not isinstance(policy, SnapKV):
        assert bool((got.read <= GROUP * budget).all())
    assert bool((full > budget).any()), f"{policy}: the union never exceeded the budget in this case"


def test_h2o_and_key_norm_with_every_slot_recent_are_the_sliding_window():
    layer, x = layer_and_input()
    for policy in (H2O(7, 7), H2O(7, 7, "query"), KeyNorm(7, 7)):
        got = evicted_attention(layer, x, policy)
        assert torch.equal(got.reads, visible(SEQ, window=7).expand(BATCH, HEADS, SEQ, SEQ)), policy


def test_key_norm_keeps_the_smallest_norms_of_the_tokens_past_the_recent_ones():
    layer, x = layer_and_input()
    budget, recent = 8, 3
    got = evicted_attention(layer, x, KeyNorm(budget, recent))
    norms = layer.qkv(x)[1].norm(dim=-1)  # (batch, n_kv_heads, seq)
    for t in range(budget, SEQ):
        old = norms[..., :t - recent + 1]
        smallest = old <= old.sort(-1).values[..., budget - recent - 1:budget - recent]
        want = torch.cat([smallest, torch.ones(BATCH, KV_HEADS, recent, dtype=torch.bool)], -1)
        assert torch.equal(got.reads[:, ::GROUP, t, :t + 1], want), f"step {t}"


def test_the_oracle_stores_every_token_and_reads_fewer():
    got = evicted_attention(*layer_and_input(), OracleTopK(5))
    assert torch.equal(got.stored, torch.arange(1, SEQ + 1).expand(BATCH, KV_HEADS, SEQ))
    assert torch.equal(got.reads.sum(-1), torch.arange(1, SEQ + 1).clamp(max=5).expand(BATCH, HEADS, SEQ))
    assert bool((got.read < got.stored)[..., 15:].all())


def test_kv_bytes_prices_tokens_as_cache_math_does():
    stored = evicted_attention(*layer_and_input(), H2O(8, 2)).stored
    assert torch.equal(kv_bytes(stored, HEAD_DIM), stored * 2 * HEAD_DIM * 2)  # bf16: 2 bytes a number
    assert kv_bytes(10, 64, "int8") == 10 * 2 * (64 + 2 + 2)  # a bf16 scale and minimum per 64 numbers
    assert kv_bytes(3, 64, ElementType("int4", scale_group=32)) == 3 * 2 * (32 + 2 * 4)
    with pytest.raises(ValueError, match="tokens=-1"):
        kv_bytes(-1, 64)


def _layer_x():
    return layer_and_input(seq=12)


BAD = [
    BadInput("budget 0", lambda: H2O(0, 0), ValueError, "budget=0", "positive integer"),
    BadInput("recent past the budget", lambda: H2O(4, 5), ValueError, "recent=5", "0..budget=4"),
    BadInput("negative recent", lambda: KeyNorm(4, -1), ValueError, "recent=-1"),
    BadInput("a key-norm budget of 0", lambda: KeyNorm(0, 0), ValueError, "budget=0"),
    BadInput("an unknown scoring", lambda: H2O(4, 1, "group"), ValueError, "scoring='group'", "kv_sum"),
    BadInput("window past the prompt", lambda: SnapKV(8, 4, 6), ValueError, "window=6", "prompt=4"),
    BadInput("window past the budget", lambda: SnapKV(4, 10, 6), ValueError, "window=6", "budget=4"),
    BadInput("an unknown pooling", lambda: SnapKV(8, 10, 2, pooling="median"), ValueError, "pooling='median'",
             r"\('max', 'avg'\)"),
    BadInput("an even kernel", lambda: SnapKV(8, 10, 2, kernel=4), ValueError, "kernel=4", "odd"),
    BadInput("a SnapKV budget of 0", lambda: SnapKV(0, 10, 2), ValueError, "budget=0"),
    BadInput("k 0", lambda: OracleTopK(0), ValueError, "k=0", "positive integer"),
    BadInput("a prompt longer than x", lambda: evicted_attention(*_layer_x(), SnapKV(8, 20, 2)), ValueError,
             "prompt=20", "12 tokens"),
    BadInput("a policy that is no policy", lambda: evicted_attention(_layer_x()[0], _layer_x()[1], "h2o"),
             TypeError, "policy=str", "H2O, SnapKV"),
    BadInput("a layer that is no GQA layer", lambda: evicted_attention(torch.nn.Linear(2, 2), _layer_x()[1], H2O(4, 1)),
             TypeError, "layer=Linear"),
    BadInput("x of another width", lambda: evicted_attention(_layer_x()[0], torch.randn(1, 5, 47), H2O(4, 1)),
             ValueError, "x.shape=(1, 5, 47)"),
]


@pytest.mark.parametrize("bad", BAD, ids=lambda bad: bad.label)
def test_bad_input_is_named(bad):
    AttentionContract.check_bad_input(bad)


def test_a_planted_wrong_policy_fails_the_real_cache_check():
    """Evicting the highest score instead of the lowest, and reading the k smallest scores: both are caught."""
    layer, x = layer_and_input()
    h2o = evicted_attention(layer, x, H2O(8, 2)).out
    assert_agree(h2o, decode_evicting(layer, x, 8, 2)[0], F32, "the right rule")  # the rule written here is right
    with pytest.raises(AssertionError, match="evicting the highest: .* differ beyond"):
        assert_agree(h2o, decode_evicting(layer, x, 8, 2, pick=max)[0], F32, "evicting the highest")
    top = evicted_attention(layer, x, OracleTopK(5)).out
    with pytest.raises(AssertionError, match="the k smallest: .* differ beyond"):
        assert_agree(top, decode_top_k(layer, x, OracleTopK(5), largest=False)[0], F32, "the k smallest")


@torch.no_grad()
@pytest.mark.parametrize("policy", [H2O(8, 4, "query"), SnapKV(10, 20, 4), OracleTopK(6, "kv_sum")], ids=repr)
def test_the_benchmark_layer_scores_and_attends_with_the_bf16_cache(policy):
    layer, x = layer_and_input()
    wrapped = EvictedCacheAttention(layer, policy)
    want = evicted_attention(layer, x, policy, store_dtype=torch.bfloat16)
    torch.testing.assert_close(wrapped(x), want.out, rtol=0, atol=0)
    assert torch.equal(wrapped.last.stored, want.stored) and torch.equal(wrapped.last.read, want.read)
    assert wrapped.numbers_per_token() == 2 * KV_HEADS * HEAD_DIM
    # Nothing evicted, the bf16 cache is cache_shrink's unshrunk one: the eviction rows start from the original row.
    whole = EvictedCacheAttention(layer, H2O(SEQ, 0))(x)
    torch.testing.assert_close(whole, ShrunkCacheAttention(layer)(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="policy=str"):
        EvictedCacheAttention(layer, "h2o")

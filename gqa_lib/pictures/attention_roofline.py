"""One decode step's attention on the roofline (notebook 06): what ``experiments.attention_roofline`` measured."""

from __future__ import annotations

IMPL_LABELS = {"gqa_lib": "gqa_lib (grouped rows, no copy)",
               "sdpa": "SDPA(enable_gqa=True)",
               "expand": "expand (repeat_kv, fresh copy)",
               "expand_into": "expand into a reused buffer",
               "grouped_explicit": "grouped, scores written out (no copy)"}
IMPL_MARKERS = {"gqa_lib": "o", "sdpa": "^", "expand": "s", "expand_into": "P", "grouped_explicit": "D"}


def _kind_legend(ax, kinds, impls, extra=(), loc="lower right", **kwargs):
    from matplotlib.lines import Line2D

    from gqa_lib.pictures.style import kind_color

    handles = [Line2D([], [], marker="o", ls="", color=kind_color(k), label=k) for k in kinds]
    handles += [Line2D([], [], marker=IMPL_MARKERS[i], ls="", color="white", markeredgecolor="black",
                       label=IMPL_LABELS[i]) for i in impls]
    ax.legend(handles=handles + list(extra), fontsize=7.5, loc=loc, **kwargs)


LABEL_BOX = {"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8}  # readable over a line
LABEL_GAP = 1.25  # points of one intensity closer than this factor in GFLOP/s share one cache-length label


def _label_cache_lengths(ax, rows: list[dict]) -> None:
    """Label each point with its cache length ("4k"), one label for points that would print over each other."""
    by_intensity: dict[float, list[tuple[float, int]]] = {}
    for r in rows:
        by_intensity.setdefault(r["flop_per_byte"], []).append((r["flops"] / r["median_ms"] / 1e6, r["seq_len"]))
    for x, points in by_intensity.items():
        points.sort()
        clusters = [[points[0]]]
        for p in points[1:]:
            if p[0] < clusters[-1][-1][0] * LABEL_GAP:
                clusters[-1].append(p)
            else:
                clusters.append([p])
        for c in clusters:
            text = ", ".join(f"{n // 1024}k" for _, n in sorted(c, key=lambda p: p[1]))
            y = (c[0][0] * c[-1][0]) ** 0.5  # the middle of the cluster on the log axis
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, -2), fontsize=6.5, color="#333333",
                        bbox=LABEL_BOX)


def plot_roofline(rows: list[dict], read_bytes_per_s: float, peak_flops_per_s: float, ax=None,
                  impls=("gqa_lib", "sdpa", "expand"), decode_gemm_flops_per_s: float | dict | None = None,
                  decode_gemm_label: str = "decode-shape GEMM", label_seq: bool = True,
                  kernel_in_cache_flops_per_s: dict | None = None):
    """The roofline: attained GFLOP/s (FLOPs / median time) against arithmetic intensity (FLOP per byte read).

    Solid line: ``min(peak, intensity * bandwidth)``, the most a step of that intensity can attain
    (sloped part: memory-bound; flat part: compute-bound). ``decode_gemm_flops_per_s``: the rate of the
    step's own thin products, either one number (a dotted line across) or {group size: FLOP/s}, drawn as a
    dotted segment over the intensity of the rows with that group size (query heads per KV head): the
    arithmetic ceiling that binds those rows, which sits far below the large product's peak.
    ``kernel_in_cache_flops_per_s`` ({group size: FLOP/s}, optional): the kernel itself with K and V in
    cache, a dash-dot segment. Colour = attention kind, marker = implementation, bars = quartiles of the timed
    calls; ``rows`` should share one dtype and thread count. Points of one intensity differ in cache length
    (labelled for the first implementation; lengths whose points lie within 25% of each other share a label,
    "16k, 32k", so that no two labels print over each other).
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    from gqa_lib.pictures.style import NEUTRAL, kind_color

    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 5.8), layout="constrained")
    shown = [r for r in rows if r["impl"] in impls]
    for r in shown:  # the bar spans the quartiles of the timed calls (slower quartile = lower GFLOP/s)
        gf = r["flops"] / r["median_ms"] / 1e6
        err = [[gf - r["flops"] / r["q3_ms"] / 1e6], [r["flops"] / r["q1_ms"] / 1e6 - gf]]
        ax.errorbar(r["flop_per_byte"], gf, yerr=err, fmt="none", ecolor=kind_color(r["kind"]), elinewidth=1,
                    capsize=2, zorder=2)
        ax.scatter(r["flop_per_byte"], r["flops"] / r["median_ms"] / 1e6, color=kind_color(r["kind"]),
                   marker=IMPL_MARKERS.get(r["impl"], "o"), s=40, zorder=3, edgecolor="black", linewidth=0.4,
                   alpha=0.85)
    if label_seq:
        _label_cache_lengths(ax, [r for r in shown if r["impl"] == impls[0]])
    lo = min(r["flop_per_byte"] for r in shown) / 2
    ridge = peak_flops_per_s / read_bytes_per_s
    hi = max(max(r["flop_per_byte"] for r in shown) * 4, ridge * 3)
    xs = [lo, ridge, hi]
    ax.plot(xs, [min(peak_flops_per_s, x * read_bytes_per_s) / 1e9 for x in xs], color=NEUTRAL, lw=1.6)
    extra = [Line2D([], [], color=NEUTRAL, lw=1.6,
                    label=f"roofline: {read_bytes_per_s / 1e9:.1f} GB/s x FLOP/B, "
                          f"cap {peak_flops_per_s / 1e9:.0f} GFLOP/s")]
    if isinstance(decode_gemm_flops_per_s, int | float):
        ax.axhline(decode_gemm_flops_per_s / 1e9, color=NEUTRAL, ls=":", lw=1.2)
        extra.append(Line2D([], [], color=NEUTRAL, ls=":", lw=1.2,
                            label=f"{decode_gemm_label}: {decode_gemm_flops_per_s / 1e9:.0f} GFLOP/s"))
    else:
        segments = [(decode_gemm_flops_per_s, ":", decode_gemm_label),
                    (kernel_in_cache_flops_per_s, "-.", "the kernel with K and V in cache")]
        for rates, style, label in segments:
            if not rates:
                continue
            for g, rate in sorted(rates.items()):
                xg = [r["flop_per_byte"] for r in shown if int(r["n_heads"]) // int(r["n_kv_heads"]) == g]
                if not xg:
                    continue
                x = xg[0]
                ax.plot([x / 1.8, x * 1.8], [rate / 1e9] * 2, color=NEUTRAL, ls=style, lw=1.3, zorder=1)
                if style == ":":
                    ax.annotate(f"{g} row{'s' * (g > 1)}", (x / 1.8, rate / 1e9), textcoords="offset points",
                                xytext=(0, 1), va="bottom", fontsize=7, color=NEUTRAL,  # left end: lengths go right
                                bbox=LABEL_BOX)
            extra.append(Line2D([], [], color=NEUTRAL, ls=style, lw=1.3,
                                label=f"{label}, by query rows per KV head"))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per byte of K and V read)")
    ax.set_ylabel("attained GFLOP/s (step FLOPs / median time)")
    kinds = sorted({r["kind"] for r in shown}, key=["MHA", "GQA", "MQA"].index)
    _kind_legend(ax, kinds, impls, extra, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    return ax

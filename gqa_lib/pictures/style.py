"""One look for every figure of the series: the attention-kind palette and small plotting helpers."""

from __future__ import annotations

# Okabe-Ito colours: distinguishable with the common forms of colour blindness.
PALETTE = {
    "MHA": "#0072B2",  # blue
    "GQA": "#009E73",  # bluish green
    "MQA": "#D55E00",  # vermillion
    "MLA": "#CC79A7",  # reddish purple
}
NEUTRAL = "#555555"
HEATMAP_CMAP = "viridis"  # perceptually uniform, readable in grey
DIVERGING_CMAP = "RdBu_r"

# Reference lines: GPU memory as the makers' data sheets state it (NVIDIA: GeForce RTX 4090 24 GB GDDR6X,
# A100 and H100 SXM 80 GB HBM, H200 141 GB HBM3e), drawn as GiB; what a program can allocate is a little less
# (an H200 reports about 140 GiB, an H100 about 79.6).
GPU_MEMORY_GIB = {"24 GiB (RTX 4090)": 24, "80 GiB (A100/H100)": 80, "141 GiB (H200)": 141}


def kind_color(kind: str) -> str:
    """The series' colour for 'MHA', 'GQA', 'MQA' or 'MLA'."""
    try:
        return PALETTE[kind]
    except KeyError:
        raise ValueError(f"kind={kind!r} has no colour (valid: {', '.join(PALETTE)})") from None


def use_series_style() -> None:
    """Matplotlib defaults used by every notebook: readable sizes, light grid, no top/right spines."""
    import matplotlib as mpl

    mpl.rcParams.update({
        "figure.dpi": 100, "savefig.dpi": 100, "font.size": 10, "axes.titlesize": 11,
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
    })


def kind_legend_handles():
    """Legend patches for the four attention kinds."""
    from matplotlib.patches import Patch

    return [Patch(color=c, label=k) for k, c in PALETTE.items()]

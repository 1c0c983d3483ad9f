"""Interactive widgets of the series, one module per widget; a notebook's "Try it" cell calls one function.

Each builder returns an ``ipywidgets`` container whose controls and readouts are attributes, so the
tests can set ``.value`` on a control and read what the reader would see. Modules are imported on
first use, so importing ``gqa_lib.widgets`` stays cheap.

Shared parts: ``controls`` (sliders and selections that refuse a value they do not offer with a
``NotOffered`` error listing the valid ones, and ``CUSTOM = "custom"``, the one spelling of a preset
list's own-shape entry), ``blit`` (figures redrawn over a cached background), ``text`` (a count with
its noun, a context length as a label) and ``token_cap`` (the first 32 tokens that the SmolLM2 explorers
analyse).
"""

import importlib

_BUILDERS = {
    "kv_cache_calculator": "cache_calculator",  # notebook 01
    "head_heatmap_explorer": "head_heatmaps",  # notebook 02
    "mqa_cache_comparison": "mqa_cache",  # notebook 03
    "group_explorer": "group_shapes",  # notebook 04 (named apart from its builder, so importing it cannot shadow it)
    "smollm_group_explorer": "smollm_explorer",  # notebook 05
    "mla_cache_comparison": "mla_cache",  # notebook 07
    "cache_budget_explorer": "cache_budget",  # notebook 08
}

__all__ = list(_BUILDERS)


def __getattr__(name):
    if name in _BUILDERS:
        module = importlib.import_module(f"{__name__}.{_BUILDERS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r} (widgets: {', '.join(_BUILDERS)})")

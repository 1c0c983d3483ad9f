"""The package's public surface: what the notebooks import."""

import importlib

import pytest

import gqa_lib
from gqa_lib import widgets


def test_public_names_import():
    for name in gqa_lib.__all__:
        assert hasattr(gqa_lib, name), name


def test_kv_cache_bytes_is_public_with_documented_defaults():
    # batch=1 and bytes_per_elem=2 (bf16/fp16) are the defaults the issue names
    assert gqa_lib.kv_cache_bytes(32, 8, 128, 8192) == 2 * 32 * 8 * 128 * 8192 * 2


def test_widget_builders_map_to_modules():
    for name, module in widgets._BUILDERS.items():
        spec = importlib.util.find_spec(f"gqa_lib.widgets.{module}")
        if spec is None:
            pytest.skip(f"gqa_lib.widgets.{module} not written yet")
        assert callable(getattr(widgets, name))


def test_unknown_widget_name_lists_the_known_ones():
    with pytest.raises(AttributeError, match="kv_cache_calculator"):
        widgets.no_such_widget  # noqa: B018

"""Notebook 08's budget widget, headless, on the shipped table: the budget arithmetic and the choice it shows."""

import math

import pytest

from gqa_lib.experiments.cache_pareto import best_within, bytes_per_token_at, scored_bytes_per_token
from gqa_lib.experiments.results import RESULTS_DIR, read_results
from gqa_lib.widgets import cache_budget_explorer
from gqa_lib.widgets.cache_budget import measured_near, offered
from gqa_lib.widgets.controls import NotOffered

pytestmark = pytest.mark.usefixtures("single_thread")  # as in the notebooks: see tests/conftest.py
TABLE = read_results(RESULTS_DIR / "cache_pareto.csv")
OFFERED = offered(TABLE.to_dict("records"))
ROWS = measured_near(OFFERED, 1024)["rows"]  # the default context's measurement


@pytest.fixture
def widget():
    return cache_budget_explorer(TABLE)


def test_bytes_recomputed_at_the_measured_contexts_match_the_file():
    for r in OFFERED:
        assert scored_bytes_per_token(r) == pytest.approx(r["kv_bytes_per_token"], abs=0.05), r["method"]


def test_a_window_costs_less_per_token_as_the_context_grows():
    r = next(r for r in ROWS if r["family"] == "sliding window" and int(r["sinks"]) > 0)
    kept = int(r["window"]) + int(r["sinks"])
    assert bytes_per_token_at(r, 32768) == pytest.approx(30 * 384 * 2 * kept / 32768)
    original = next(r for r in ROWS if r["method"].startswith("original ("))
    assert bytes_per_token_at(original, 32768) == 23040  # the full cache costs the same per token at any length


def test_default_budget_and_best_choice(widget):
    v = widget.readout_values()
    assert v["budget"] == pytest.approx(0.02e9 / 1024)
    fit = [dict(r, kv_bytes_per_token=bytes_per_token_at(r, 1024)) for r in ROWS if r["source"] != "control"]
    by_hand = min((r for r in fit if r["kv_bytes_per_token"] <= v["budget"]), key=lambda r: r["val_nll"])
    assert v["best"]["method"] == by_hand["method"] == best_within(fit, v["budget"])["method"]
    assert by_hand["method"] in widget.readout.value
    assert all(r["bytes_at_context"] <= v["budget"] for r in v["fits"])
    assert all(r["bytes_at_context"] > v["budget"] for r in v["too_big"])
    assert len(v["fits"]) + len(v["too_big"]) == len([r for r in ROWS if r["source"] != "control"])  # not the control
    assert all(r["source"] != "control" for r in v["fits"] + v["too_big"])


def test_a_budget_nothing_fits_says_so(widget):
    widget.memory.value = widget.memory.options[0][1]
    widget.batch.value = widget.batch.max
    widget.context.value = widget.context.options[-1][1]
    v = widget.readout_values()
    assert v["best"] is None and not v["fits"]
    assert "No method fits" in widget.readout.value and v["too_big"][0]["method"] in widget.readout.value


def test_a_large_budget_fits_everything_and_picks_the_lowest_loss(widget):
    widget.memory.value = widget.memory.options[-1][1]
    v = widget.readout_values()
    assert not v["too_big"]
    assert v["best"]["val_nll"] == min(r["val_nll"] for r in ROWS if r["source"] != "control")


def test_controls_refuse_values_they_do_not_offer(widget):
    with pytest.raises(NotOffered, match="memory"):
        widget.memory.value = 3.3
    with pytest.raises(NotOffered, match="context"):
        widget.context.value = 3000


def test_every_update_draws_a_picture(widget):
    for value in (2048, 8192, 512):
        widget.context.value = value
        assert widget.image.value[:4] == b"\x89PNG" and not math.isnan(widget.last_update_s)


def _table():
    return read_results(RESULTS_DIR / "cache_pareto.csv")


@pytest.mark.parametrize(("damage", "named"), [
    (lambda t: t[t.family != "original"], r"0 rows with family='original' and source='original'"),
    (lambda t: t.drop(columns=["val_nll"]), r"lacks the column\(s\) val_nll"),
    (lambda t: t.assign(val_nll=[float("nan")] + list(t.val_nll[1:])), r"loss is not a finite number: original"),
    (lambda t: t.iloc[:0], r"table has no rows"),
])
def test_a_table_it_cannot_read_is_named(damage, named):
    """A table without the original's row used to fail with an empty StopIteration."""
    from gqa_lib.widgets.cache_budget import budget_choice

    bad = damage(_table())
    with pytest.raises(ValueError, match=named):
        cache_budget_explorer(bad)
    with pytest.raises(ValueError, match=named):
        budget_choice(bad.to_dict("records"), 0.02, 2048, 1)


def test_the_losses_are_those_measured_nearest_and_the_readout_says_so(widget):
    lengths = sorted({int(r["context"]) for r in OFFERED})
    for context in (512, 1024, 2048, 4096, 8192):
        widget.context.value = context
        m = widget.readout_values()["measured"]
        assert m["context"] == min(lengths, key=lambda n: (abs(math.log(context / n)), -n))
        assert m["inside"] == (m["first"] <= context <= m["context"])
        said = widget.readout.value
        if m["inside"]:
            assert "this context was measured" in said and "Nothing was measured" not in said
        else:
            assert f"Nothing was measured at {context:,} tokens" in said and f"{m['context']:,} tokens" in said
    assert all(str(r.get("evicts", False)) != "True" for r in OFFERED)  # eviction bytes were measured, not computed


def test_a_change_that_rounds_to_zero_has_no_sign():
    """"-0.000" reads as a loss that fell; a change under half a thousandth of a nat is shown as 0.000."""
    from gqa_lib.widgets.cache_budget import _signed

    assert [_signed(x) for x in (0.0, -0.0, -0.0004, 0.0004, 0.016, -0.0006, float("-1e-9"))] == \
        ["0.000", "0.000", "0.000", "0.000", "+0.016", "-0.001", "0.000"]

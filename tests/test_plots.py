"""The figures plot the record's numbers: the data of each drawn line against the record's traces
and values computed here by hand (running peak, round markers, the curve's ±std band and where
it stops), instead of only checking that some pixels were drawn."""
from __future__ import annotations

import numpy as np
import pytest

from vreason.plots import entropy_curve_figure, figure_image, sample_trace_figure
from vreason.records import Record

RECORD = Record(
    key="B/3", benchmark="B", index=3, mode="switch", num_new_tokens=5, reward=0.0, error=None,
    entropy=[2.0, 2.5, 1.5, 3.0, 1.0], entropy_after=[2.1, 2.5, 1.4, 3.0, 0.9],
    ema=[0.5, 0.7, 0.6, 0.9, 0.8], alpha=[1, 1, -1, 1, -1], updated=[1, 0, 1, 0, 1],
)


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_sample_trace_draws_the_record_and_its_running_peak():
    fig = sample_trace_figure(RECORD)
    ax_h, ax_a = fig.axes
    lines = lines_by_label(ax_h)
    k = [0, 1, 2, 3, 4]
    for label, values in [("entropy H_k", RECORD.entropy), ("entropy after update", RECORD.entropy_after),
                          ("EMA E_k", RECORD.ema), ("running peak", [0.5, 0.7, 0.7, 0.9, 0.9])]:
        assert lines[label].get_xdata().tolist() == k, label
        assert lines[label].get_ydata().tolist() == pytest.approx(values), label
    # Dots at the tokens where a round ran, at the entropy before it.
    assert lines["round ran"].get_xdata().tolist() == [0, 2, 4]
    assert lines["round ran"].get_ydata().tolist() == pytest.approx([2.0, 1.5, 1.0])
    (alpha,) = ax_a.get_lines()
    assert alpha.get_ydata().tolist() == RECORD.alpha
    assert "B #3 (switch): 5 tokens" in fig._suptitle.get_text()
    img = figure_image(fig)
    assert img.shape == (450, 800, 3) and img.dtype == np.uint8  # 8 × 4.5 inches at 100 dpi


def test_entropy_curve_band_and_cut_where_too_few_samples_remain():
    # 5% of the first count (100) is 5 samples: indices 3 and 4 (4 and 2 samples) are not drawn.
    curve = {"mean": [1.0, 1.2, 0.8, 0.4, 0.3], "std": [0.1, 0.2, 0.3, 0.0, 0.0], "count": [100, 80, 10, 4, 2]}
    other = {"mean": [2.0, 2.0], "std": [0.5, 0.5], "count": [3, 3]}
    fig = entropy_curve_figure({"switch": curve, "off": other})
    (ax,) = fig.axes
    lines = lines_by_label(ax)
    assert lines["switch"].get_xdata().tolist() == [0, 1, 2]
    assert lines["switch"].get_ydata().tolist() == pytest.approx([1.0, 1.2, 0.8])
    assert lines["off"].get_ydata().tolist() == pytest.approx([2.0, 2.0])
    # The ±std band of "switch": its polygon spans mean − std … mean + std at each drawn index.
    band = ax.collections[0].get_paths()[0].vertices
    lo, hi = {}, {}
    for x, y in band:
        if x in (0, 1, 2):
            hi[x] = max(hi.get(x, -np.inf), y)
            lo[x] = min(lo.get(x, np.inf), y)
    assert [lo[x] for x in (0, 1, 2)] == pytest.approx([0.9, 1.0, 0.5])
    assert [hi[x] for x in (0, 1, 2)] == pytest.approx([1.1, 1.4, 1.1])
    assert max(x for x, _ in band) == 2  # the band stops with its line


def test_identical_curves_stay_visible_and_say_so():
    # Plain decoding and V-Reason often give the same curve: the second must not hide under the first.
    curve = {"mean": [1.0, 0.8, 0.6], "std": [0.1, 0.1, 0.1], "count": [4, 4, 4]}
    other = {"mean": [1.0, 0.9, 0.7], "std": [0.1, 0.1, 0.1], "count": [4, 4, 4]}
    fig = entropy_curve_figure({"off": curve, "switch": dict(curve), "minimize": other})
    (ax,) = fig.axes
    lines = lines_by_label(ax)
    assert set(lines) == {"off", "switch (identical to off)", "minimize"}
    twin = lines["switch (identical to off)"]
    assert twin.get_ydata().tolist() == pytest.approx(curve["mean"])
    assert twin.get_linestyle() != lines["off"].get_linestyle() and twin.get_marker() not in (None, "None", "")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "switch (identical to off)" in legend


def test_std_band_is_clipped_at_zero_nats():
    curve = {"mean": [0.2, 1.0, 0.05], "std": [0.5, 0.3, 0.4], "count": [3, 3, 3]}
    (ax,) = entropy_curve_figure({"switch": curve}).axes
    band = ax.collections[0].get_paths()[0].vertices
    lo = {}
    for x, y in band:
        if x in (0, 1, 2):
            lo[x] = min(lo.get(x, np.inf), y)
    assert [lo[x] for x in (0, 1, 2)] == pytest.approx([0.0, 0.7, 0.0])


def test_sample_figure_is_titled_with_the_runs_label():
    # A Lite run's records say mode "switch"; its figures must name the run.
    fig = sample_trace_figure(RECORD, label="switch+lite0.5")
    assert "B #3 (switch+lite0.5): 5 tokens" in fig._suptitle.get_text()

"""Figures of a run, drawn with matplotlib's Agg canvas directly (no pyplot, no display): one
sample's entropy, EMA, running peak and α per generated token, and the mean entropy curve with
its ±std band over a benchmark, the paper's way of showing macro-exploration and -exploitation
(the paper, Fig. 1). Used by TensorBoard logging, the demo and the paper-table script.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from vreason.records import Record


def _figure(width: float, height: float, rows: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    return fig, list(axes)


def figure_image(fig) -> "Any":
    """RGB array `[H, W, 3]` of a matplotlib figure."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def sample_trace_figure(record: "Record", label: Optional[str] = None):
    """Entropy (before and after the round), its EMA with the running peak, and α over the
    generated tokens of one sample; dots mark tokens where an optimization round ran. The title
    names the run by `label` (`run_settings.run_label`: `switch+lite0.5` for Lite, whose records
    say only `switch`), else by the record's mode."""
    import numpy as np

    h = np.asarray(record.entropy, dtype=float)
    fig, (ax_h, ax_a) = _figure(8, 4.5, rows=2)
    k = np.arange(len(h))
    ax_h.plot(k, h, color="tab:orange", lw=1.2, label="entropy H_k")
    after = record.entropy_after
    if after:
        ax_h.plot(k, np.asarray(after, dtype=float), color="tab:red", lw=0.8, alpha=0.7, label="entropy after update")
    ema = np.asarray(record.ema, dtype=float)
    if len(ema):
        ax_h.plot(k[: len(ema)], ema, color="tab:blue", lw=1.5, label="EMA E_k")
        ax_h.plot(k[: len(ema)], np.maximum.accumulate(ema), color="tab:blue", lw=0.8, ls="--", label="running peak")
    updated = np.asarray(record.updated, dtype=bool)
    if updated.any() and len(h):
        idx = k[: len(updated)][updated[: len(h)]]
        ax_h.plot(idx, h[idx], ".", color="k", ms=3, label="round ran")
    ax_h.set_ylabel("entropy (nats)")
    ax_h.grid(True, alpha=0.3)
    ax_h.legend(fontsize=7, loc="upper right")
    alpha = np.asarray(record.alpha, dtype=float)
    ax_a.step(np.arange(len(alpha)), alpha, where="post", color="tab:green")
    ax_a.set_ylim(-1.3, 1.3)
    ax_a.set_yticks([-1, 1])
    ax_a.set_ylabel("α")
    ax_a.set_xlabel("generated token")
    ax_a.grid(True, alpha=0.3)
    status = f"score {record.reward}" if not record.error else "error"
    fig.suptitle(f"{record.benchmark} #{record.index} ({label or record.mode or ''}): "
                 f"{record.num_new_tokens} tokens, {status}", fontsize=9)
    fig.tight_layout()
    return fig


def entropy_curve_figure(curves: dict[str, dict], title: str = "Entropy vs generated output token", min_fraction: float = 0.05):
    """Mean entropy vs generated-token index with a ±std band, one line per label (a mode, a
    model or a benchmark), like the paper's entropy-curve figure. An index is drawn while at
    least `min_fraction` of that curve's samples (and at least one) are still generating, so the
    tail is not one sample's noise. The band is clipped at 0 nats (entropy is never negative). A
    curve equal to one drawn before it (plain decoding and V-Reason often agree token for token)
    would hide under it: it is drawn dashed, with markers, as "<label> (identical to <other>)"."""
    import numpy as np

    fig, (ax,) = _figure(9, 3.6)
    drawn: dict[str, tuple] = {}
    for label, curve in curves.items():
        mean = np.asarray(curve.get("mean") or [], dtype=float)
        std = np.asarray(curve.get("std") or [], dtype=float)
        count = np.asarray(curve.get("count") or [], dtype=float)
        if not len(mean):
            continue
        keep = count >= max(1.0, math.ceil(min_fraction * count[0]))
        m = int(keep.sum()) if keep.all() else int(np.argmin(keep))
        x = np.arange(m)
        key = (mean[:m].tobytes(), std[:m].tobytes())
        twin = next((other for other, k in drawn.items() if k == key), None)
        drawn.setdefault(label, key)
        if twin is not None:
            ax.plot(x, mean[:m], lw=1.6, ls=(0, (4, 3)), marker="o", ms=3, markevery=max(1, m // 24),
                    label=f"{label} (identical to {twin})")
            continue
        (line,) = ax.plot(x, mean[:m], lw=1.6, label=label)
        ax.fill_between(x, np.maximum(mean - std, 0.0)[:m], (mean + std)[:m], color=line.get_color(), alpha=0.25, lw=0)
    ax.set_title(title)
    ax.set_xlabel("generated output token")
    ax.set_ylabel("entropy (nats)")
    ax.grid(True, alpha=0.4)
    if curves:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

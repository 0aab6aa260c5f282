"""TensorBoard content of a run: at the end, from the merged summary, per-benchmark scalars,
entropy curves, output-token histograms, the table as text and the hyperparameters with their
results (per-sample figures are logged live by the module as samples finish).
"""
from __future__ import annotations

from typing import Optional

from vreason.plots import entropy_curve_figure, figure_image
from vreason.report import summary_markdown


def log_summary_to_tensorboard(experiment, summary: dict, label: str, hparams: Optional[dict] = None, logger=None) -> None:
    """End-of-run TensorBoard content from the merged summary: per-benchmark scalars, entropy
    curves, output-token histograms, the table as text and the hparams with their results."""
    import numpy as np

    records = summary.get("_records", {})
    for bench, row in summary["benchmarks"].items():
        for tag, value in (
            ("score", row.get("mean_score")), ("accuracy", row.get("mean_acc")), ("mra", row.get("mean_mra")), ("tokens", row.get("mean_tokens")),
            ("latency_s", row.get("mean_latency_s")), ("errors", row.get("n_errors")),
            ("tokens_per_s", row.get("tokens_per_s")), ("entropy", row.get("mean_entropy")),
        ):
            if value is not None:
                experiment.add_scalar(f"{tag}/{bench}", float(value), 0)
        tokens = [r.num_new_tokens for r in records.get(bench, [])]
        if tokens:
            experiment.add_histogram(f"output_tokens/{bench}", np.asarray(tokens, dtype=np.int64), 0)
        if row["entropy_curve"]["mean"]:
            fig = entropy_curve_figure({label: row["entropy_curve"]}, title=f"{bench}: entropy vs generated output token")
            experiment.add_image(f"entropy_curve/{bench}", figure_image(fig), 0, dataformats="HWC")
    curves = {b: r["entropy_curve"] for b, r in summary["benchmarks"].items() if r["entropy_curve"]["mean"]}
    if curves:
        fig = entropy_curve_figure(curves, title=f"{label}: entropy vs generated output token")
        experiment.add_image("entropy_curve/all_benchmarks", figure_image(fig), 0, dataformats="HWC")
    overall = summary["overall"]
    for tag, value in (("score", overall.get("mean_score")), ("tokens", overall.get("mean_tokens")),
                       ("latency_s", overall.get("mean_latency_s")), ("errors", overall.get("n_errors"))):
        if value is not None:
            experiment.add_scalar(f"{tag}/overall", float(value), 0)
    experiment.add_text("summary", summary_markdown(summary), 0)
    if logger is not None and hparams is not None:
        hp_metrics = {f"hp/{k}": float(v) for k, v in (("score", overall.get("mean_score")), ("tokens", overall.get("mean_tokens")),
                                                        ("latency_s", overall.get("mean_latency_s"))) if v is not None}
        logger.log_hyperparams(hparams, metrics=hp_metrics or None)
    experiment.flush()

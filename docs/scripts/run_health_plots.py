"""The figures of docs/is-my-run-working.md, drawn from the metrics.jsonl of real toy runs.

    python docs/scripts/run_health_plots.py OUT.png LABEL=RUN_DIR [LABEL=RUN_DIR ...] [--metrics a,b,c]

Each panel is one logged metric against the step, one line per run (a rolling
mean over 5 logged rows, the raw values faint behind it); the legend gives each
run's mode accuracy from its eval.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DEFAULT_METRICS = "loss,pref/accuracy,pref/margin,mse/student_w,mse/student_l,grad_norm"
LOG_SCALE = {"loss", "pref/margin", "mse/student_w", "mse/student_l", "mse/ref_l", "grad_norm"}


def rolling_mean(values: np.ndarray, width: int = 5) -> np.ndarray:
    out = np.empty_like(values)
    for i in range(len(values)):
        window = values[max(0, i - width + 1): i + 1]
        out[i] = np.nanmean(window) if np.isfinite(window).any() else np.nan
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    parser.add_argument("--metrics", default=DEFAULT_METRICS)
    args = parser.parse_args()
    metrics = args.metrics.split(",")
    cols = 3
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    floor: dict[str, float] = {}  # log panels: the smallest rolling mean, so a raw 1e-30 does not set the axis
    for n, spec in enumerate(args.runs):
        label, run_dir = spec.split("=", 1)
        lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        scores = Path(run_dir) / "eval.json"
        if scores.is_file():
            label += f" (mode accuracy {json.loads(scores.read_text())['toy/mode_accuracy']:.2f})"
        steps = np.array([row["step"] for row in lines])
        color = f"C{n}"
        for ax, key in zip(axes.flat, metrics):
            values = np.array([row.get(key, np.nan) for row in lines], dtype=float)
            if key in LOG_SCALE:
                values = np.where(values > 0, values, np.nan)  # log axes: a zero gradient is not drawn
            ax.plot(steps, values, color=color, alpha=0.2, linewidth=0.8)
            smooth = rolling_mean(values)
            ax.plot(steps, smooth, color=color, linewidth=1.8, label=label)
            if np.isfinite(smooth).any():
                floor[key] = min(floor.get(key, np.inf), float(np.nanmin(smooth)))
            # The reference's own error beside the student's (same draws in every run); DDSPO's ref_w is 0.
            ref_key = key.replace("student", "ref")
            if key.startswith("mse/student") and n == 0 and any(row.get(ref_key, 0) > 0 for row in lines):
                ref = np.array([row[ref_key] for row in lines], dtype=float)
                ax.plot(steps, rolling_mean(ref), color="black", linestyle="--", linewidth=1, label=ref_key)
    for ax, key in zip(axes.flat, metrics):
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        if key in LOG_SCALE:
            ax.set_yscale("log")
            if key in floor:
                ax.set_ylim(bottom=floor[key] / 3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            if text not in labels:
                handles.append(handle)
                labels.append(text)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8)
    fig.tight_layout(rect=(0, 0.04 * (1 + len(labels) // 3), 1, 1))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=90)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

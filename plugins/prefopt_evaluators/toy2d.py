"""The ``toy2d_modes`` evaluator: samples per condition, mode metrics, Fig. 2 panels."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from pydantic import Field

from prefopt.interfaces import REFERENCE, STUDENT, Evaluator, PluginConfig
from prefopt.toy2d_world import ToyLayout


def read_samples(path: Path):
    import numpy as np

    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    points = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    return points, np.array([int(r["condition"]) for r in rows])


def write_samples(path: Path, points, conditions) -> None:
    """samples.csv, written whole or not at all (a full disk never leaves a cut file)."""
    from prefopt.atomic import write_atomic

    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["x", "y", "condition"])
    for (x, y), c in zip(points.tolist(), conditions.tolist()):
        writer.writerow([f"{x:.6f}", f"{y:.6f}", c])
    write_atomic(Path(path), table.getvalue().encode())


class Toy2DModes(Evaluator):
    """Mode accuracy, sliced Wasserstein to the ground truth, and adjacent-mode separation."""

    name = "toy2d_modes"

    class Config(PluginConfig):
        layout: ToyLayout = ToyLayout()
        samples_per_condition: int = Field(500, ge=10)
        seed: int = Field(1234, description="sampling seed; the same for every method compared")

    def evaluate(self, backbone, run_dir: str, seed: int) -> dict[str, float]:
        import numpy as np

        from prefopt_evaluators import toy2d_metrics as m

        cfg, layout = self.config, self.config.layout
        conditions = np.repeat(np.arange(layout.num_conditions), cfg.samples_per_condition)
        seeds = [cfg.seed * 1_000_003 + i for i in range(len(conditions))]
        prompts = [str(c) for c in conditions]
        points = backbone.sample(prompts, seeds, source=STUDENT).cpu().numpy()
        write_samples(Path(run_dir) / "samples.csv", points, conditions)

        truth = layout.sample(conditions, np.random.default_rng(cfg.seed))
        reference = backbone.sample(prompts, seeds, source=REFERENCE).cpu().numpy()
        self.figure({"ground truth": (truth, conditions), "reference": (reference, conditions),
                     "fine-tuned": (points, conditions)}, Path(run_dir) / "samples.png")
        per_condition = [
            m.sliced_wasserstein(points[conditions == k], truth[conditions == k], seed=cfg.seed)
            for k in range(layout.num_conditions)
        ]
        return {
            "toy/mode_accuracy": m.mode_accuracy(points, conditions, layout.centers(), layout.std),
            "toy/sliced_wasserstein": float(np.mean(per_condition)),
            "toy/separation": m.separation(points, conditions, layout.centers()),
        }

    def comparison_figure(self, runs: dict[str, Path], shared_dir: Path, path: Path) -> Path:
        """Fig. 2 of the paper: ground truth, the noisy training data, then every run's samples."""
        import numpy as np

        from prefopt.data.pairset import PairDataset

        layout = self.config.layout
        conditions = np.repeat(np.arange(layout.num_conditions), self.config.samples_per_condition)
        panels = {"ground truth": (layout.sample(conditions, np.random.default_rng(self.config.seed)), conditions)}
        noisy_dir = Path(shared_dir) / "reference" / "pairs"
        if noisy_dir.is_dir():
            data = PairDataset(noisy_dir)
            x0_w, _, prompts, _ = data.batch(range(len(data)))
            panels["noisy data"] = (x0_w.numpy(), np.array([int(p) for p in prompts]))
        for name, run_dir in runs.items():
            samples = Path(run_dir) / "samples.csv"
            if samples.is_file():
                panels[name] = read_samples(samples)
        return self.figure(panels, path)

    def figure(self, panels: dict, path: Path) -> Path:
        """Scatter panels in the layout of the paper's Fig. 2; panels: title -> (points, conditions)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from prefopt.figures import save_figure

        lim = self.config.layout.radius + 2.0
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
        import numpy as np

        for ax, (title, (points, conditions)) in zip(axes[0], panels.items()):
            # Draw in a random order: drawn by condition, the last ones would hide the rest.
            order = np.random.default_rng(0).permutation(len(points))
            points, conditions = points[order], conditions[order]
            ax.scatter(points[:, 0], points[:, 1], c=conditions, cmap="tab10", s=3, alpha=0.6,
                       vmin=0, vmax=max(9, self.config.layout.num_conditions - 1))
            ax.set_title(title, fontsize=10)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        return save_figure(fig, path, dpi=120)

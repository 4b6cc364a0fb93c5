"""The ``clip_score`` evaluator: CLIP score (or PickScore) of the trained model's images, and its win rate."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

from pydantic import Field

from prefopt.atomic import write_atomic
from prefopt.evaluation import EvalRow, Scores, write_records
from prefopt.interfaces import REFERENCE, STUDENT
from prefopt_evaluators.prompt_sets import PromptChoice, PromptSetEvaluator

DEFAULT_PROMPTS = [
    # GenEval-style: colours, counts, positions and attribute binding, plus two open scenes.
    "a photo of a red apple and a blue cup",
    "a photo of three dogs on a sofa",
    "a photo of a cat to the left of a bicycle",
    "a photo of a yellow umbrella",
    "a photo of a clock above a green door",
    "a photo of a purple car next to a white horse",
    "a photo of two birds sitting on a wooden fence",
    "an oil painting of a lighthouse at sunset",
]
LABELS = {REFERENCE: "reference", STUDENT: "fine-tuned"}
LABELS_OF_RESULTS = {REFERENCE: "reference", STUDENT: "student"}  # the models of <prefix>_results.jsonl


def first_rows(prompts: list[str]) -> dict[str, int]:
    """Each distinct prompt -> its first row, in the order the prompts come."""
    first: dict[str, int] = {}
    for i, prompt in enumerate(prompts):
        first.setdefault(prompt, i)
    return first


class ClipScore(PromptSetEvaluator):
    """CLIP score of the student's images against their prompts, and its win rate over the reference.

    Each prompt is drawn ``images_per_prompt`` times, every (prompt, image)
    row with its own fixed seed, so every method compared scores images from
    the same starting noise. A score is ``scale`` × the cosine of the CLIP
    image and text embeddings, clamped at 0 (torchmetrics' CLIPScore). With
    ``compare_reference`` the reference model draws the same rows, and the win
    rate is the share of rows where the student scores higher (a tie counts 1/2).

    PickScore is the same computation with PickScore's model and the
    processor of the CLIP-H it was fine-tuned from (PickScore's own code
    multiplies the cosine by the model's ``logit_scale.exp()``; set ``scale``
    to that value to reproduce its numbers exactly)::

        eval:
          - name: clip_score
            model: yuvalkirstain/PickScore_v1
            processor: laion/CLIP-ViT-H-14-laion2B-s32B-b79K
            prefix: pickscore

    Writes to the run directory: ``<prefix>_scores.csv`` (one row per image),
    ``<prefix>_images/student/<row>.png`` (and ``reference/``),
    ``<prefix>_results.jsonl`` (the rows as every image evaluator writes them), and
    ``<prefix>_samples.png``, the first image of every prompt. The recipe's seed
    is not used: every run is scored on the rows of ``seed``.
    """

    name = "clip_score"

    class Config(PromptChoice):
        # The prompt choice of every prompt-set evaluator, with CLIP score's own defaults.
        prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS), min_length=1,
                                   description="evaluation prompts (or prompts_file)")
        images_per_prompt: int = Field(2, ge=1, description="images drawn per prompt, each with its own seed")
        model: str = Field("openai/clip-vit-large-patch14", description="CLIP model: hub id or local directory")
        processor: str | None = Field(None, description="CLIP processor: hub id or local directory (None: model's)")
        # Not `name`: in a recipe, a component's `name` picks the plugin.
        prefix: str = Field("clip", pattern=r"^[A-Za-z0-9_.-]+$",
                            description="metric prefix (<prefix>/score ...) and output file prefix; e.g. pickscore")
        scale: float = Field(100.0, gt=0, description="score = scale × max(cosine, 0)")
        compare_reference: bool = Field(True, description="also score the reference's images and report the "
                                                          "student's win rate")

    def rows(self) -> list[tuple[str, int]]:
        """(prompt, seed) per image, prompt-major: row k·n + j is image j of prompt k."""
        return [(row.prompt, row.seed) for row in self.eval_rows()]

    def load_scorer(self, device):
        from prefopt_evaluators.clip_model import ClipScorer

        return ClipScorer(self.config.model, self.config.processor, device)

    def score(self, scorer, images, rows: list[EvalRow]) -> Scores:
        return Scores(per_image={"score": scorer.scores(images, [row.prompt for row in rows], self.config.batch_size,
                                                        self.config.scale)})

    def evaluate(self, backbone, run_dir: str, seed: int) -> dict[str, float]:
        import numpy as np
        import torch

        from prefopt_evaluators.clip_model import ClipScorer

        cfg, run_dir = self.config, Path(run_dir)
        rows = self.rows()
        prompts = [prompt for prompt, _ in rows]
        # Scored on the backbone's device (the CPU for a backbone without a runtime). CLIP is
        # loaded first so that a wrong model id fails in seconds, not after the sampling.
        runtime = getattr(backbone, "runtime", None)
        scorer = ClipScorer(cfg.model, cfg.processor, runtime.device if runtime else torch.device("cpu"))
        sources = [STUDENT, REFERENCE] if cfg.compare_reference else [STUDENT]
        images = self._sample(backbone, rows, sources)
        scores = {s: np.array(scorer.scores(images[s], prompts, cfg.batch_size, cfg.scale)) for s in sources}

        self._write(run_dir, rows, images, scores)
        student = scores[STUDENT]
        metrics = {f"{cfg.prefix}/score": float(student.mean()), f"{cfg.prefix}/score_std": float(student.std())}
        if cfg.compare_reference:
            reference = scores[REFERENCE]
            wins = np.where(student > reference, 1.0, np.where(student == reference, 0.5, 0.0))
            metrics[f"{cfg.prefix}/reference_score"] = float(reference.mean())
            metrics[f"{cfg.prefix}/win_rate"] = float(wins.mean())
        return metrics

    def _sample(self, backbone, rows: list[tuple[str, int]], sources: list[str]) -> dict[str, list]:
        """Decoded images of every row from each source, drawn in batches of the same rows."""
        from tqdm.auto import tqdm

        size = self.config.batch_size
        images: dict[str, list] = {source: [] for source in sources}
        with tqdm(total=len(rows) * len(sources), unit="image", desc=f"{self.config.prefix} samples") as bar:
            for start in range(0, len(rows), size):
                batch = rows[start:start + size]
                for source in sources:
                    x0 = backbone.sample([p for p, _ in batch], [s for _, s in batch], source=source)
                    images[source] += backbone.decode(x0)
                    bar.update(len(batch))
        return images

    def _write(self, run_dir: Path, rows, images: dict[str, list], scores: dict[str, Any]) -> None:
        from prefopt.figures import image_grid

        prefix = self.config.prefix
        image_dir = run_dir / f"{prefix}_images"
        shutil.rmtree(image_dir, ignore_errors=True)  # a longer earlier run must not leave extra images
        for source, source_images in images.items():
            (image_dir / source).mkdir(parents=True)
            for i, image in enumerate(source_images):
                png = io.BytesIO()
                image.save(png, format="PNG")
                write_atomic(image_dir / source / f"{i}.png", png.getvalue())  # never half an image
        table = io.StringIO(newline="")
        writer = csv.writer(table)
        writer.writerow(["prompt", "seed", "student_score", "reference_score"])
        for i, (prompt, seed) in enumerate(rows):
            reference = f"{scores[REFERENCE][i]:.6f}" if REFERENCE in scores else ""
            writer.writerow([prompt, seed, f"{scores[STUDENT][i]:.6f}", reference])
        write_atomic(run_dir / f"{prefix}_scores.csv", table.getvalue().encode())  # whole or absent
        write_records(run_dir / f"{prefix}_results.jsonl", [EvalRow(prompt, seed) for prompt, seed in rows],
                      {LABELS_OF_RESULTS[s]: Scores(per_image={"score": list(scores[s])}) for s in images},
                      {LABELS_OF_RESULTS[s]: [image_dir / s / f"{i}.png" for i in range(len(rows))] for s in images})
        first = first_rows([prompt for prompt, _ in rows])
        grid = {LABELS[s]: [images[s][i] for i in first.values()] for s in (REFERENCE, STUDENT) if s in images}
        image_grid(list(grid.values()), run_dir / f"{prefix}_samples.png", row_labels=list(grid),
                   column_titles=list(first))

    def _read_run(self, run_dir: Path) -> tuple[list[str], dict[str, list]] | None:
        """(prompts, {source: the first image of each prompt}) from a run's outputs; None if it has none."""
        from PIL import Image

        prefix = self.config.prefix
        table = Path(run_dir) / f"{prefix}_scores.csv"
        if not table.is_file():
            return None
        with open(table, newline="") as handle:
            first = first_rows([row["prompt"] for row in csv.DictReader(handle)])
        found = {}
        for source in (REFERENCE, STUDENT):
            source_dir = Path(run_dir) / f"{prefix}_images" / source
            if source_dir.is_dir():
                found[source] = [Image.open(source_dir / f"{i}.png").convert("RGB") for i in first.values()]
        return list(first), found

    def comparison_figure(self, runs: dict[str, Path], shared_dir: Path, path: Path) -> Path | None:
        """One row per variant (after the shared reference's row), one column per prompt."""
        from prefopt.figures import image_grid

        titles, grid = None, {}
        for variant, run_dir in runs.items():
            found = self._read_run(run_dir)
            if found is None:
                continue
            prompts, images = found
            titles = titles or prompts
            # Every variant trains from the same reference on the same seeds: its row is drawn once.
            if REFERENCE in images and LABELS[REFERENCE] not in grid:
                grid = {LABELS[REFERENCE]: images[REFERENCE], **grid}
            grid[variant] = images[STUDENT]
        if not grid:
            return None
        return image_grid(list(grid.values()), Path(path), row_labels=list(grid), column_titles=titles)

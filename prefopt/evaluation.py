"""Scoring generated images: one drawing per (model, prompt, seed), every evaluator, intervals and win rates.

An :class:`ImageEvaluator` names the rows it scores (prompt, seed, and a group
such as a GenEval tag) and scores images it is handed; prefopt draws the
images. Images are drawn in batches, cached on disk as PNGs that carry their
prompt and seed, and reused by every evaluator that asks for the same row
under the same sampling settings, and by a rerun after an interruption.

Two entry points:

* ``ImageEvaluator.evaluate`` (what ``prefopt run`` and ``prefopt compare`` call
  after training): the student's images, and with ``compare_reference`` the
  reference's, scored; flat metrics including the win rate over the reference.
* :func:`evaluate_models` (``prefopt eval``): the base model and any number of
  trained weights (a run's ``final/`` or a checkpoint), each scored by every
  evaluator of the recipe, into ``eval.json`` with per-metric means, 95%
  bootstrap intervals and each model's win rate over the base on the same
  prompt and seed.

A metric of a grouped evaluator is the mean of its group means (GenEval's
Overall is the mean of its tag scores), so its bootstrap resamples rows within
each group.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from prefopt.data.pairset import write_atomic
from prefopt.errors import PrefoptError
from prefopt.interfaces import REFERENCE, STUDENT, Evaluator

log = logging.getLogger(__name__)

SEED_STRIDE = 1_000_003
"""Row i of an evaluator is drawn with seed × SEED_STRIDE + i, so two nearby seeds share no row."""
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
BASE = "base"
SAMPLING_FIELDS = ("num_inference_steps", "guidance_scale")


@dataclass(frozen=True)
class EvalRow:
    """One image to score: its prompt, its seed, its group (e.g. a GenEval tag) and evaluator data."""

    prompt: str
    seed: int
    group: str | None = None
    data: Any = field(default=None, compare=False, hash=False)


@dataclass
class Scores:
    """What an evaluator found in one model's images.

    ``per_image``: metric -> one value per row (higher is better), averaged
    into the metric (by group means when rows have groups). ``group_metric``:
    the per-image metric whose group means are also reported, as
    ``<prefix>/<group>``. ``records``: one dict per row for
    ``<prefix>_results.jsonl`` (verdicts, reasons). ``totals``: metrics of the
    whole set that no row carries (FID, IS).
    """

    per_image: dict[str, list[float]] = field(default_factory=dict)
    group_metric: str | None = None
    records: list[dict] = field(default_factory=list)
    totals: dict[str, float] = field(default_factory=dict)


class ImageEvaluator(Evaluator):
    """An evaluator of images that prefopt draws; subclasses give rows() and score().

    Its Config must have ``prefix`` and may have ``compare_reference``,
    ``batch_size``, ``num_inference_steps`` and ``guidance_scale`` (the
    sampling settings of its benchmark; None keeps the backbone's).
    """

    def rows(self) -> list[EvalRow]:
        raise NotImplementedError

    def load_scorer(self, device) -> Any:
        """The scoring models, loaded once and used for every model's images."""
        raise NotImplementedError

    def score(self, scorer: Any, images: Sequence[Any], rows: Sequence[EvalRow]) -> Scores:
        raise NotImplementedError

    @property
    def prefix(self) -> str:
        return self.config.prefix

    def sampling(self) -> dict[str, Any]:
        """Backbone sampling settings this evaluator's benchmark fixes (steps, CFG)."""
        return {k: getattr(self.config, k) for k in SAMPLING_FIELDS if getattr(self.config, k, None) is not None}

    def evaluate(self, backbone, run_dir: str, seed: int) -> dict[str, float]:
        run_dir = Path(run_dir)
        cache = ImageCache(run_dir / "eval_images")
        sources = {STUDENT: student_key(run_dir)}
        if getattr(self.config, "compare_reference", False):
            sources[REFERENCE] = base_key(backbone)
        rows = self.rows()
        # The scorer is loaded first, so that a wrong model id fails before the sampling.
        with loaded(self, backbone_device(backbone)) as scorer:
            scored = {}
            for source, key in sources.items():
                images = draw(backbone, source, key, rows, self.sampling(), cache, self.batch_size())
                scored[source] = score_images(self, scorer, images, rows)
        metrics = summarise(self.prefix, scored[STUDENT], rows)
        if REFERENCE in scored:
            reference = summarise(self.prefix, scored[REFERENCE], rows)
            metrics.update({f"{self.prefix}/reference/{k.split('/', 1)[1]}": v for k, v in reference.items()})
            metrics.update(win_rates(self.prefix, scored[STUDENT], scored[REFERENCE]))
        write_records(run_dir / f"{self.prefix}_results.jsonl", rows, {"student": scored[STUDENT],
                                                                         **({"reference": scored[REFERENCE]}
                                                                            if REFERENCE in scored else {})})
        return metrics

    def batch_size(self) -> int:
        return getattr(self.config, "batch_size", 4)


def seeded_rows(prompts: Iterable[tuple[str, str | None, Any]], images_per_prompt: int, seed: int) -> list[EvalRow]:
    """Rows prompt-major (row k·n + j is image j of prompt k), each with its own seed."""
    expanded = [item for item in prompts for _ in range(images_per_prompt)]
    return [EvalRow(prompt, seed * SEED_STRIDE + i, group, data) for i, (prompt, group, data) in enumerate(expanded)]


# ------------------------------------------------------------------ scorers' memory

def backbone_device(backbone):
    import torch

    runtime = getattr(backbone, "runtime", None)
    return runtime.device if runtime is not None else torch.device("cpu")


@contextmanager
def loaded(evaluator: ImageEvaluator, device):
    """The evaluator's scorer for the duration of a block; its memory is handed back after."""
    import gc

    import torch

    scorer = evaluator.load_scorer(device)
    try:
        yield scorer
    finally:
        del scorer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def score_images(evaluator: ImageEvaluator, scorer, images: Sequence[Any], rows: Sequence[EvalRow]) -> Scores:
    import torch

    if len(images) != len(rows):
        raise ValueError(f"{len(images)} images for {len(rows)} rows")
    with torch.inference_mode():
        return evaluator.score(scorer, images, rows)


# ------------------------------------------------------------------ drawing and the image cache

def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_fingerprint(path: str | Path) -> Any:
    """What identifies weights on disk without reading them: every file's name, size and mtime."""
    path = Path(path)
    if not path.exists():
        return str(path)  # a hub id
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def base_key(backbone) -> str:
    """The base (reference) model's cache key: its loading settings and the weights they name."""
    config = backbone.config.model_dump(mode="json")
    pretrained = config.get("pretrained")
    return f"{BASE}-" + fingerprint([config, weights_fingerprint(pretrained) if pretrained else None])


def student_key(run_dir: Path) -> str:
    """A trained run's key: the final/ it saved (drawn right after training, the student is final/)."""
    final = Path(run_dir) / "final"
    return "student-" + fingerprint(weights_fingerprint(final) if final.exists() else str(run_dir))


class ImageCache:
    """PNGs under ``root/<model key>/``, named by their sampling settings, prompt and seed."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, model: str, sampling: dict, row: EvalRow) -> Path:
        return self.root / model / f"{fingerprint([sampling, row.prompt, row.seed])}.png"

    def get(self, model: str, sampling: dict, row: EvalRow):
        from PIL import Image

        path = self.path(model, sampling, row)
        if not path.is_file():
            return None
        try:
            with Image.open(path) as image:
                image.load()
                if image.text.get("prompt") != row.prompt or image.text.get("seed") != str(row.seed):
                    return None
                return image.convert("RGB")
        except OSError:  # a damaged file is drawn again, never used
            return None

    def put(self, model: str, sampling: dict, row: EvalRow, image) -> None:
        from PIL.PngImagePlugin import PngInfo

        path = self.path(model, sampling, row)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = PngInfo()
        info.add_text("prompt", row.prompt)
        info.add_text("seed", str(row.seed))
        info.add_text("sampling", json.dumps(sampling, sort_keys=True))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info)
        write_atomic(path, buffer.getvalue())


@contextmanager
def sampling_settings(backbone, overrides: dict[str, Any]):
    """The backbone samples with an evaluator's steps and guidance for the duration of a block."""
    if not overrides:
        yield
        return
    fields = type(backbone.config).model_fields
    unknown = [key for key in overrides if key not in fields]
    if unknown:
        raise PrefoptError(f"the {backbone.name} backbone has no sampling setting {unknown[0]!r}; "
                           f"set the evaluator's {unknown[0]} to null")
    original = backbone.config
    backbone.config = original.model_copy(update=overrides)  # read at each sample() call
    try:
        yield
    finally:
        backbone.config = original


def draw(backbone, source: str, model_key: str, rows: Sequence[EvalRow], sampling: dict[str, Any],
         cache: ImageCache, batch_size: int) -> list:
    """Every row's image from ``source``: from the cache, or drawn in batches and cached."""
    from tqdm.auto import tqdm

    images = [cache.get(model_key, sampling, row) for row in rows]
    missing = [i for i, image in enumerate(images) if image is None]
    if missing:
        with sampling_settings(backbone, sampling), \
                tqdm(total=len(missing), unit="image", desc=f"drawing {model_key[:24]}") as bar:
            for start in range(0, len(missing), batch_size):
                batch = missing[start:start + batch_size]
                x0 = backbone.sample([rows[i].prompt for i in batch], [rows[i].seed for i in batch], source=source)
                for i, image in zip(batch, backbone.decode(x0)):
                    cache.put(model_key, sampling, rows[i], image)
                    images[i] = image
                bar.update(len(batch))
    return images


# ------------------------------------------------------------------ statistics

def grouped_mean(values: Sequence[float], groups: Sequence[str | None]):
    """The mean of the group means (the plain mean when no row has a group)."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    keys = list(dict.fromkeys(groups))
    return float(np.mean([values[[g == k for g in groups]].mean() for k in keys]))


def group_means(values: Sequence[float], groups: Sequence[str | None]) -> dict[str, float]:
    import numpy as np

    values = np.asarray(values, dtype=float)
    return {k: float(values[[g == k for g in groups]].mean()) for k in dict.fromkeys(groups) if k is not None}


def bootstrap_interval(values: Sequence[float], groups: Sequence[str | None], resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the grouped mean, resampling rows with replacement within each group."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = []
    for key in dict.fromkeys(groups):
        members = values[[g == key for g in groups]]
        picks = rng.integers(0, len(members), size=(resamples, len(members)))
        means.append(members[picks].mean(axis=1))
    estimates = np.mean(means, axis=0)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(low), float(high)


def win_rate(run: Sequence[float], base: Sequence[float]) -> float:
    """Share of rows where the run scores above the base on the same prompt and seed (a tie counts 1/2)."""
    import numpy as np

    run, base = np.asarray(run, dtype=float), np.asarray(base, dtype=float)
    if run.shape != base.shape:
        raise ValueError("win rate: the run and the base were scored on different rows")
    return float(np.where(run > base, 1.0, np.where(run == base, 0.5, 0.0)).mean())


def summarise(prefix: str, scores: Scores, rows: Sequence[EvalRow]) -> dict[str, float]:
    """Flat metrics of one model's scores: each per-image metric, group means, set totals."""
    groups = [row.group for row in rows]
    out = {f"{prefix}/{metric}": grouped_mean(values, groups) for metric, values in scores.per_image.items()}
    if scores.group_metric is not None:
        out.update({f"{prefix}/{g}": v for g, v in group_means(scores.per_image[scores.group_metric], groups).items()})
    out.update({f"{prefix}/{metric}": float(value) for metric, value in scores.totals.items()})
    return out


def win_rates(prefix: str, run: Scores, base: Scores) -> dict[str, float]:
    return {f"{prefix}/{metric}/win_rate": win_rate(values, base.per_image[metric])
            for metric, values in run.per_image.items()}


def intervals(prefix: str, scores: Scores, rows: Sequence[EvalRow]) -> dict[str, list[float]]:
    groups = [row.group for row in rows]
    return {f"{prefix}/{metric}": list(bootstrap_interval(values, groups))
            for metric, values in scores.per_image.items()}


def write_records(path: Path, rows: Sequence[EvalRow], scored: dict[str, Scores]) -> None:
    """One JSON line per (model, row): prompt, seed, group, per-image values and the evaluator's record."""
    lines = []
    for model, scores in scored.items():
        for i, row in enumerate(rows):
            record = {"model": model, "prompt": row.prompt, "seed": row.seed}
            if row.group is not None:
                record["group"] = row.group
            record.update({metric: values[i] for metric, values in scores.per_image.items()})
            if scores.records:
                record.update(scores.records[i])
            lines.append(json.dumps(record))
    write_atomic(path, ("\n".join(lines) + "\n").encode())


# ------------------------------------------------------------------ prefopt eval: base + runs

def model_name(weights: Path) -> str:
    """A readable name for trained weights: the run directory's name, with the checkpoint's if one."""
    weights = Path(weights).resolve()
    if weights.name == "final":
        return weights.parent.name
    if weights.parent.name == "checkpoints":
        return f"{weights.parent.parent.name}@{weights.name}"
    return weights.name


def load_weights(backbone, weights: Path) -> None:
    """A save() output (final/) through the backbone; a training checkpoint into the trained module."""
    weights = Path(weights)
    if not weights.is_dir():
        raise PrefoptError(f"no trained weights at {weights}; run the recipe first or pass --weights")
    state = weights / "model.safetensors"
    if (weights / "trainer_state.json").is_file():
        if not state.is_file():
            raise PrefoptError(f"checkpoint {weights} holds no model.safetensors")
        from safetensors.torch import load_file

        try:
            backbone.trainable_module().load_state_dict(load_file(str(state)))
        except RuntimeError as exc:
            raise PrefoptError(f"checkpoint {weights} does not fit this recipe's model: "
                               f"{str(exc).splitlines()[0][:200]}") from None
        return
    backbone.load_trained(str(weights))


def evaluate_models(backbone, evaluators: Sequence[Evaluator], weights: Sequence[Path], output: Path,
                    include_base: bool = True) -> dict:
    """Score the base and each trained model with every evaluator; write ``output/eval.json``.

    ``backbone`` is loaded (reference = the base model). Images are cached in
    ``output/images`` so an interrupted evaluation resumes where it stopped.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    cache = ImageCache(output / "images")
    models: dict[str, tuple[str, str, Path | None]] = {}  # name -> (source, cache key, weights)
    if include_base:
        models[BASE] = (REFERENCE, base_key(backbone), None)
    for path in weights:
        name = model_name(path)
        if name in models:
            raise PrefoptError(f"two models are both named {name!r}; evaluate them separately")
        models[name] = (STUDENT, f"{name}-" + fingerprint(weights_fingerprint(path)), Path(path))
    if not models:
        raise PrefoptError("nothing to evaluate: give --weights or keep the base model")

    image_evaluators = [e for e in evaluators if isinstance(e, ImageEvaluator)]
    others = [e for e in evaluators if not isinstance(e, ImageEvaluator)]
    scored: dict[str, dict[str, Scores]] = {name: {} for name in models}
    rows = {e.prefix: e.rows() for e in image_evaluators}
    clash = [p for i, p in enumerate(rows) if p in list(rows)[:i]]
    if len(rows) != len(image_evaluators) or clash:
        raise PrefoptError("two evaluators share a prefix; give each its own")
    # Draw every model's images first (one load of each model's weights), then score evaluator by evaluator,
    # so one scorer at a time is in memory.
    images: dict[str, dict[str, list]] = {name: {} for name in models}
    flat: dict[str, dict[str, float]] = {name: {} for name in models}
    for name, (source, key, path) in models.items():
        if path is not None:
            load_weights(backbone, path)
        for evaluator in image_evaluators:
            images[name][evaluator.prefix] = draw(backbone, source, key, rows[evaluator.prefix],
                                                  evaluator.sampling(), cache, evaluator.batch_size())
        if path is not None:
            for evaluator in others:  # evaluators that draw for themselves see this model as the student
                run_dir = output / "runs" / name
                run_dir.mkdir(parents=True, exist_ok=True)
                flat[name].update(evaluator.evaluate(backbone, str(run_dir), 0))
    for evaluator in image_evaluators:
        with loaded(evaluator, backbone_device(backbone)) as scorer:
            for name in models:
                scored[name][evaluator.prefix] = score_images(evaluator, scorer, images[name][evaluator.prefix],
                                                              rows[evaluator.prefix])
        write_records(output / f"{evaluator.prefix}_results.jsonl", rows[evaluator.prefix],
                      {name: scored[name][evaluator.prefix] for name in models})

    report: dict[str, Any] = {"bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "confidence": 0.95,
                                            "seed": BOOTSTRAP_SEED, "resampled": "rows, within each group"},
                              "models": {}}
    for name, (_, _, path) in models.items():
        entry: dict[str, Any] = {"weights": str(path) if path else None, "metrics": dict(flat[name]),
                                 "ci95": {}, "win_rate": {}}
        for evaluator in image_evaluators:
            prefix, scores = evaluator.prefix, scored[name][evaluator.prefix]
            entry["metrics"].update(summarise(prefix, scores, rows[prefix]))
            entry["ci95"].update(intervals(prefix, scores, rows[prefix]))
            if include_base and name != BASE:
                entry["win_rate"].update({k.rsplit("/", 1)[0]: v for k, v in
                                          win_rates(prefix, scores, scored[BASE][prefix]).items()})
        report["models"][name] = entry
    write_atomic(output / "eval.json", (json.dumps(report, indent=1) + "\n").encode())
    return report


def print_report(report: dict) -> None:
    for name, entry in report["models"].items():
        print(f"{name}:")
        for metric, value in entry["metrics"].items():
            interval = entry["ci95"].get(metric)
            line = f"  {metric}: {value:.4f}"
            if interval:
                line += f"  [{interval[0]:.4f}, {interval[1]:.4f}]"
            if metric in entry["win_rate"]:
                line += f"  win rate {entry['win_rate'][metric]:.3f}"
            print(line)

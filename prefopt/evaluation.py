"""Scoring generated images: one drawing per (model, prompt, seed), every evaluator, intervals and win rates.

An :class:`ImageEvaluator` names the rows (``eval_rows``) it scores (prompt, seed, and a group
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
from collections.abc import Iterable, Sequence
from typing import Any

from prefopt.atomic import strict_json, write_atomic
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
    """An evaluator of images that prefopt draws; subclasses give eval_rows(), load_scorer() and score().

    Its Config must have ``prefix`` and may have ``compare_reference``,
    ``batch_size``, ``num_inference_steps`` and ``guidance_scale`` (the
    sampling settings of its benchmark; None keeps the backbone's).
    """

    def eval_rows(self) -> list[EvalRow]:
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
        self.check()
        run_dir = Path(run_dir)
        cache = ImageCache(run_dir / "eval_images")
        sources = {STUDENT: student_key(run_dir)}
        if getattr(self.config, "compare_reference", False):
            sources[REFERENCE] = base_key(backbone)
        rows = self.eval_rows()
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
        names = {STUDENT: "student", REFERENCE: "reference"}
        write_records(run_dir / f"{self.prefix}_results.jsonl", rows,
                      {names[source]: scores for source, scores in scored.items()},
                      {names[source]: [cache.path(key, self.sampling(), row) for row in rows]
                       for source, key in sources.items()})
        return metrics

    def batch_size(self) -> int:
        return getattr(self.config, "batch_size", 4)

    def local_files(self) -> list[str]:
        """Local files the evaluator will read (checkpoints, reference sets), named in its Config."""
        return []

    def check(self) -> None:
        """Fail now, not after training, on prompt files or local files that are missing or malformed."""
        self.eval_rows()
        for path in self.local_files():
            if not Path(path).expanduser().exists():
                raise PrefoptError(f"the {self.name} evaluator ({self.prefix}) needs {path}, which does not exist")


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


def pixels_digest(image) -> str:
    """sha256 of an RGB image's pixels: PIL does not check a PNG's CRCs when it decodes, so a flipped
    byte in the image data can still decode, to wrong pixels."""
    return hashlib.sha256(image.tobytes()).hexdigest()


class ImageCache:
    """PNGs under ``root/<model key>/``, named by their sampling settings, prompt and seed.

    Each carries its prompt, seed and pixels' digest in text chunks; an image whose
    text or pixels do not match is drawn again, never scored.
    """

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
                rgb = image.convert("RGB")
                if image.text.get("pixels") != pixels_digest(rgb):
                    return None
                return rgb
        except (OSError, SyntaxError, ValueError):  # a damaged file (PIL raises all three) is drawn again
            return None

    def put(self, model: str, sampling: dict, row: EvalRow, image) -> None:
        from PIL.PngImagePlugin import PngInfo

        path = self.path(model, sampling, row)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = PngInfo()
        info.add_text("prompt", row.prompt)
        info.add_text("seed", str(row.seed))
        info.add_text("sampling", json.dumps(sampling, sort_keys=True))
        image = image.convert("RGB")
        info.add_text("pixels", pixels_digest(image))
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


class CachedImages(Sequence):
    """A model's images for an evaluator's rows, read from the cache when indexed.

    Scorers take their images a batch at a time, so 30,000 FID images are
    never all in memory.
    """

    def __init__(self, cache: ImageCache, model: str, sampling: dict, rows: Sequence[EvalRow]):
        self.cache, self.model, self.sampling, self.rows = cache, model, sampling, list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        image = self.cache.get(self.model, self.sampling, self.rows[index])
        if image is None:
            raise PrefoptError(f"cached image {self.cache.path(self.model, self.sampling, self.rows[index])} "
                               "vanished or was damaged while it was being scored; evaluate again")
        return image


def draw(backbone, source: str, model_key: str, rows: Sequence[EvalRow], sampling: dict[str, Any],
         cache: ImageCache, batch_size: int) -> CachedImages:
    """Every row's image from ``source``: in the cache already, or drawn in batches and cached."""
    from tqdm.auto import tqdm

    missing = [i for i, row in enumerate(rows) if cache.get(model_key, sampling, row) is None]
    if missing:
        with sampling_settings(backbone, sampling), \
                tqdm(total=len(missing), unit="image", desc=f"drawing {model_key[:24]}") as bar:
            for start in range(0, len(missing), batch_size):
                batch = missing[start:start + batch_size]
                x0 = backbone.sample([rows[i].prompt for i in batch], [rows[i].seed for i in batch], source=source)
                for i, image in zip(batch, backbone.decode(x0)):
                    cache.put(model_key, sampling, rows[i], image)
                bar.update(len(batch))
    return CachedImages(cache, model_key, sampling, rows)


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


def write_records(path: Path, rows: Sequence[EvalRow], scored: dict[str, Scores],
                  images: dict[str, list[Path]]) -> None:
    """One JSON line per (model, row): prompt, seed, group, image, per-image values and the evaluator's record.

    The image path is relative to the file's directory.
    """
    import os

    lines = []
    for model, scores in scored.items():
        for i, row in enumerate(rows):
            record = {"model": model, "prompt": row.prompt, "seed": row.seed,
                      "image": os.path.relpath(images[model][i], path.parent)}
            if row.group is not None:
                record["group"] = row.group
            record["scores"] = {metric: values[i] for metric, values in scores.per_image.items()}
            if scores.records:
                record.update(scores.records[i])
            lines.append(json.dumps(record))
    write_atomic(path, ("\n".join(lines) + "\n").encode())


# ------------------------------------------------------------------ prefopt eval: base + runs

def model_name(weights: Path) -> str:
    """A readable name for trained weights: the run directory's name (with its variant's in a comparison),
    and the checkpoint's for a checkpoint."""
    weights = Path(weights).resolve()
    if weights.name == "final":
        run_dir, suffix = weights.parent, ""
    elif weights.parent.name == "checkpoints":
        run_dir, suffix = weights.parent.parent, f"@{weights.name}"
    else:
        return weights.name
    if run_dir.name.startswith("seed-"):  # prefopt compare's <variant>/seed-<s>
        return f"{run_dir.parent.name}/{run_dir.name}{suffix}"
    return run_dir.name + suffix


def is_checkpoint(weights: Path) -> bool:
    return (Path(weights) / "trainer_state.json").is_file()


def verify_weights(weights: Path) -> None:
    """Refuse weights (a final/ or a checkpoint) that differ from what their run wrote."""
    from prefopt.checksums import run_id_of, verify
    from prefopt.rundir import FINAL_REPAIR, verify_final

    if is_checkpoint(weights):  # <run>/checkpoints/step-N
        verify(weights, "checkpoint", f"evaluate another checkpoint or the run's final/ (rm -r {weights})",
               run_id=run_id_of(weights.parent.parent))
    else:  # <run>/final
        verify_final(weights, repair=FINAL_REPAIR)


def load_weights(backbone, weights: Path) -> None:
    """A save() output (final/) through the backbone; a training checkpoint into the trained module."""
    weights = Path(weights)
    if not weights.is_dir():
        raise PrefoptError(f"no trained weights at {weights}; run the recipe first or pass --weights")
    state = weights / "model.safetensors"
    verify_weights(weights)
    if is_checkpoint(weights):
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
        key = name.replace("/", "_").replace("@", "_") + "-" + fingerprint(weights_fingerprint(path))
        models[name] = (STUDENT, key, Path(path))
    if not models:
        raise PrefoptError("nothing to evaluate: give --weights or keep the base model")

    image_evaluators = [e for e in evaluators if isinstance(e, ImageEvaluator)]
    others = [e for e in evaluators if not isinstance(e, ImageEvaluator)]
    for evaluator in image_evaluators:
        evaluator.check()
    scored: dict[str, dict[str, Scores]] = {name: {} for name in models}
    rows = {e.prefix: e.eval_rows() for e in image_evaluators}
    if len(rows) != len(image_evaluators):
        raise PrefoptError("two evaluators share a prefix; give each its own")
    # Draw every model's images first (one load of each model's weights), then score evaluator by evaluator,
    # so one scorer at a time is in memory; images are read back from the cache batch by batch.
    images: dict[str, dict[str, CachedImages]] = {name: {} for name in models}
    flat: dict[str, dict[str, float]] = {name: {} for name in models}
    for name, (source, key, path) in models.items():
        if path is not None:
            load_weights(backbone, path)
        for evaluator in image_evaluators:
            images[name][evaluator.prefix] = draw(backbone, source, key, rows[evaluator.prefix],
                                                  evaluator.sampling(), cache, evaluator.batch_size())
        # Evaluators that draw for themselves see this model as the student (the base comes first: before
        # any weights are loaded, the student is the base model itself).
        for evaluator in others:
            run_dir = output / "runs" / name.replace("/", "_")
            run_dir.mkdir(parents=True, exist_ok=True)
            flat[name].update(evaluator.evaluate(backbone, str(run_dir), 0))
    for evaluator in image_evaluators:
        with loaded(evaluator, backbone_device(backbone)) as scorer:
            for name in models:
                scored[name][evaluator.prefix] = score_images(evaluator, scorer, images[name][evaluator.prefix],
                                                              rows[evaluator.prefix])
        write_records(output / f"{evaluator.prefix}_results.jsonl", rows[evaluator.prefix],
                      {name: scored[name][evaluator.prefix] for name in models},
                      {name: [cache.path(key, evaluator.sampling(), row) for row in rows[evaluator.prefix]]
                       for name, (_, key, _) in models.items()})

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
    write_atomic(output / "eval.json", (strict_json(report, indent=1) + "\n").encode())
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


def _refuse_output_inside(output: Path, run_dir: Path, sealed: list[Path]) -> None:
    """--output may not lie in the weights being scored (their seal would break), be a run's own directory
    (its eval.json is the run's) or be reached through a link in the run directory (the default run/eval)."""
    from prefopt.rundir import RESOLVED, refuse_links_between

    refuse_links_between(run_dir, output)
    target = output.resolve()
    for directory in sealed:
        if target.is_relative_to(Path(directory).resolve()):
            raise PrefoptError(f"--output {output} lies inside {directory}, which is sealed weights; "
                               "write the evaluation elsewhere")
    if (target / RESOLVED).is_file():
        raise PrefoptError(f"--output {output} is a run directory (its eval.json is the run's); "
                           f"use a directory of its own, e.g. {output / 'eval'}")


def run_eval(resolved, registry, weights: Sequence[Path] = (), include_base: bool = True,
             output: Path | None = None) -> dict:
    """``prefopt eval``: the recipe's base model and trained weights, scored by every evaluator of the recipe."""
    from prefopt.accelerate_setup import load_backbone, process_state
    from prefopt.locking import hold
    from prefopt.rundir import verify_final
    from prefopt.stages import backbone_config_for

    recipe = resolved.recipe
    run_dir = Path(recipe.output_dir)
    if not recipe.eval:
        raise PrefoptError(f"{resolved.source} has no eval section: name the evaluators to score with")
    weights = [Path(w) for w in weights] or [run_dir / "final"]
    for path in weights:
        if not Path(path).is_dir():
            raise PrefoptError(f"no trained weights at {path}; run the recipe first or pass --weights")
    reference = run_dir / "reference" / "final" if recipe.pretrain else None
    if reference is not None and not reference.is_dir():
        raise PrefoptError(f"no pretrained reference at {reference}; run the recipe first")
    output = Path(output or run_dir / "eval")
    _refuse_output_inside(output, run_dir, [*weights, *([reference] if reference is not None else [])])
    evaluators = [registry.get("evaluator", c.name)(resolved.config("eval", i)) for i, c in enumerate(recipe.eval)]
    state = process_state()
    report: dict = {}
    with hold(run_dir, "run directory", state):  # no run may replace final/ or reference/ while they are read
        for path in weights:  # before any image is drawn
            verify_weights(path)
        if reference is not None:
            verify_final(reference, repair=f"remove {reference.parent} (rm -r {reference.parent}) and run "
                                           f"`prefopt run {resolved.source} --overwrite`: it is trained anew")
        if state.is_main_process:  # other processes of an `accelerate launch` wait
            backbone = registry.get("backbone", recipe.backbone.name)(backbone_config_for(resolved, reference))
            # A training checkpoint holds the trained module's whole state (LoRA adapters included): load the
            # backbone as for training so that module exists; final/ directories load either way.
            load_backbone(backbone, recipe.train, training=any(is_checkpoint(path) for path in weights))
            report = evaluate_models(backbone, evaluators, weights, output, include_base=include_base)
            print_report(report)
            print(f"evaluation written: {output / 'eval.json'}")
        state.wait_for_everyone()
    return report

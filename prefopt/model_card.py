"""final/README.md: a Hugging Face model card for a finished run.

The card is rendered with huggingface_hub's ``ModelCard.from_template`` (its
YAML metadata from ``ModelCardData``) and tagged with diffusers'
``populate_model_card``, so the Hub reads it as any diffusers training
script's card. diffusers' ``load_or_create_model_card`` is not used: it looks
the repository up on the Hub first (a run may have no network) and its
template is a form of TODOs. Everything on the card is read from the run
directory: the resolved recipe, metrics.jsonl, eval.json, the pair dataset's
manifest and the run's figures.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from prefopt.atomic import write_atomic

log = logging.getLogger(__name__)

CARD = "README.md"
GRID = "samples.png"
# The usage snippet names the model on this one line; `prefopt push` puts the repo id there.
MODEL_LINE = re.compile(r'^model = ".*"$', re.MULTILINE)

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}

## Training

| setting | value |
|---|---|
{% for key, value in training %}| {{ key }} | {{ value }} |
{% endfor %}
{%- if last_metrics %}
Metrics of the last logged step ({{ last_step }}):

| metric | value |
|---|---|
{% for key, value in last_metrics %}| `{{ key }}` | {{ value }} |
{% endfor %}
{%- endif %}
{%- if evaluation %}
## Evaluation

| metric | value |
|---|---|
{% for key, value in evaluation %}| `{{ key }}` | {{ value }} |
{% endfor %}
{%- endif %}
{%- if grid %}
## Samples

![samples]({{ grid }})
{% endif %}
## How to use

```python
{{ usage }}
```

## Recipe

The resolved recipe (every default filled in); `prefopt run` on it repeats the run.

```yaml
{{ recipe }}```
"""

# Metrics of the last logged step worth showing on a card (the rest are in metrics.jsonl).
CARD_METRICS = ("loss", "pref/accuracy", "pref/margin", "mse/student_w", "mse/student_l",
                "mse/ref_w", "mse/ref_l", "kto/kl")


def is_hub_id(name: str | None) -> bool:
    """A Hub repository id (what the card's ``base_model`` may hold), not a local directory."""
    if not name or Path(name).exists():
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def base_license(pretrained: str | None) -> str | None:
    """The license on the base model's own card: a local README.md, or the Hub's (None if unreachable)."""
    if not pretrained:
        return None
    from huggingface_hub import ModelCard

    local = Path(pretrained) / CARD
    try:
        if local.is_file():
            return ModelCard.load(local, ignore_metadata_errors=True).data.license
        if is_hub_id(pretrained):
            return ModelCard.load(pretrained, ignore_metadata_errors=True).data.license
    except Exception as exc:  # noqa: BLE001 - offline, gated or missing card: the card just has no license
        log.warning("no license for the model card: cannot read %s's card (%s)", pretrained, type(exc).__name__)
    return None


def _last_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    for line in reversed(path.read_text().splitlines()):
        try:
            return json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
    return {}


def _pair_count(pairs_dir: Path | None) -> int | None:
    manifest = pairs_dir / "manifest.json" if pairs_dir else None
    if manifest is None or not manifest.is_file():
        return None
    return json.loads(manifest.read_text()).get("num_rows")


def _params(section: dict) -> str:
    shown = ", ".join(f"{key} {value}" for key, value in section.items() if key != "name" and value is not None)
    return f"`{section['name']}`" + (f" ({shown})" if shown else "")


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _eval_scores(data: dict) -> dict[str, float]:
    """The scores of eval.json: flat (``prefopt run``), or a trained model's of a ``prefopt eval`` report."""
    if isinstance(data.get("models"), dict):
        trained = [entry for name, entry in data["models"].items() if name != "base" and isinstance(entry, dict)]
        data = trained[0].get("metrics", {}) if trained else {}
    return {key: value for key, value in data.items() if isinstance(value, (int, float))}


def _pick_grid(run_dir: Path) -> Path | None:
    """The newest validation grid, else the first figure the evaluators wrote."""
    grids = sorted((run_dir / "validation").glob("step-*/grid.png"))
    if grids:
        return grids[-1]
    figures = sorted(run_dir.glob("*.png"))
    return figures[0] if figures else None


def _usage(pipeline_class: str | None, lora: bool, base: str, location: str) -> str:
    if pipeline_class is None:  # not a diffusers pipeline (the toy): prefopt loads it
        return f'# prefopt eval RECIPE --weights {location}\nmodel = "{location}"'
    lines = ["import torch", f"from diffusers import {pipeline_class}", "", f'model = "{location}"']
    if lora:
        lines += [f'pipe = {pipeline_class}.from_pretrained("{base}", torch_dtype=torch.float16)',
                  "pipe.load_lora_weights(model)"]
    else:
        lines += [f"pipe = {pipeline_class}.from_pretrained(model, torch_dtype=torch.float16)"]
    lines += ['pipe.to("cuda")', 'image = pipe("a photo of a cat").images[0]']
    return "\n".join(lines)


def build_card(run_dir: Path, pipeline_class: str | None, pairs_dir: Path | None = None,
               num_processes: int = 1, location: str | None = None):
    """The model card of the run in ``run_dir`` (a huggingface_hub ModelCard), and the grid it shows."""
    from diffusers.utils.hub_utils import populate_model_card
    from huggingface_hub import ModelCard, ModelCardData

    from prefopt.rundir import RESOLVED, read_resolved

    run_dir = Path(run_dir)
    recipe = read_resolved(run_dir)
    recipe_text = (run_dir / RESOLVED).read_text()
    backbone, objective, train = recipe["backbone"], recipe["objective"], recipe["train"]
    base = backbone.get("pretrained")
    if pairs_dir is None:
        pairs_dir = Path(recipe["pairs"].get("dir") or run_dir / "pairs")
    finetune = (backbone.get("finetune") or {}).get("mode")
    lora = finetune == "lora"
    pretrained_here = recipe.get("pretrain") is not None

    data = ModelCardData(
        base_model=base if is_hub_id(base) else None,
        library_name="diffusers",
        license=base_license(base),
        pipeline_tag="text-to-image" if pipeline_class else None,
    )
    card_tags = ["prefopt", objective["name"], backbone["name"], "diffusers-training"]
    if pipeline_class:
        card_tags += ["text-to-image", "lora" if lora else "full-finetune"]
    pairs = _pair_count(pairs_dir)
    effective = train["batch_size"] * train["grad_accum"] * num_processes
    training = [
        ("objective", _params(objective)),
        ("pair source", _params(recipe["pairs"]["source"])),
        ("pairs", pairs if pairs is not None else "unknown"),
        ("steps", train["max_steps"]),
        ("batch", f"{train['batch_size']} pairs × {train['grad_accum']} accumulation × {num_processes} "
                  f"process(es) = {effective} pairs per step"),
        ("learning rate", f"{train['lr']:g}" + (" per sample (scale_lr)" if train["scale_lr"] else "")
         + f", {train['lr_scheduler']}, {train['warmup_steps']} warm-up steps"),
        ("optimizer", train["optimizer"]),
        ("precision", train["mixed_precision"]),
    ]
    if finetune:
        training.append(("fine-tuning", f"LoRA rank {backbone['finetune']['rank']}" if lora else "every denoiser weight"))
    if "loss_weighting" in backbone:
        training.append(("loss weighting", backbone["loss_weighting"]))
    metrics = _last_metrics(run_dir)
    eval_path = run_dir / "eval.json"
    evaluation = _eval_scores(json.loads(eval_path.read_text())) if eval_path.is_file() else {}
    grid = _pick_grid(run_dir)
    base_text = (f"[{base}](https://huggingface.co/{base})" if is_hub_id(base)
                 else "a reference model pretrained in the same run" if pretrained_here
                 else f"`{base}`" if base else "a randomly initialised model")
    beta = f" with β = {objective['beta']:g}" if isinstance(objective.get("beta"), (int, float)) else ""
    summary = (f"{'A LoRA' if lora else 'A model'} fine-tuned from {base_text} with the `{objective['name']}` "
               f"preference objective{beta} by prefopt, on "
               f"{pairs if pairs is not None else 'an unknown number of'} preference pairs from the "
               f"`{recipe['pairs']['source']['name']}` pair source.")
    card = ModelCard.from_template(
        data,
        template_str=TEMPLATE,
        title=f"{objective['name']} fine-tune of {base if is_hub_id(base) else backbone['name']}",
        summary=summary,
        training=training,
        last_step=metrics.get("step"),
        last_metrics=[(key, _number(metrics[key])) for key in CARD_METRICS if key in metrics],
        evaluation=[(key, _number(value)) for key, value in evaluation.items()],
        grid=GRID if grid else None,
        usage=_usage(pipeline_class, lora, base, location or str(run_dir / "final")),
        recipe=recipe_text,
    )
    populate_model_card(card, tags=card_tags)
    return card, grid


def check_final(final: Path) -> str | None:
    """Refuse a final/ sealed with an integrity record (prefopt.checksums) that no longer matches it.

    Returns the run id it was sealed with (None for an unsealed final/).
    """
    record = final / "integrity.json"
    if not record.is_file():
        return None
    from prefopt import checksums

    checksums.verify(final, "trained weights", "run the recipe again to rewrite final/")
    return checksums.read_json(record, "trained weights record").get("run_id")


def update_final(final: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into a finished final/, each atomically, keeping its integrity record true.

    A damaged final/ is refused rather than sealed again as good.
    """
    run_id = check_final(final)
    for name, data in files.items():
        write_atomic(final / name, data)
    if run_id is not None:
        from prefopt import checksums

        checksums.seal(final, run_id)


def write_model_card(run_dir: Path, pipeline_class: str | None, pairs_dir: Path | None = None,
                     num_processes: int = 1) -> Path:
    """Write final/README.md (and final/samples.png when the run has a figure); returns the card's path."""
    final = Path(run_dir) / "final"
    card, grid = build_card(run_dir, pipeline_class, pairs_dir, num_processes)
    files = {CARD: str(card).encode()}
    if grid is not None:
        files[GRID] = grid.read_bytes()
    update_final(final, files)
    return final / CARD


def name_repo(card_text: str, repo_id: str) -> str:
    """The card with its usage snippet loading ``repo_id`` (what ``prefopt push`` uploads)."""
    return MODEL_LINE.sub(f'model = "{repo_id}"', card_text, count=1)

"""One rule for relative paths in a recipe: a file the recipe reads is found from the recipe's folder.

A Config field marks itself as such a path with ``json_schema_extra=RECIPE_PATH``
(or ``RECIPE_PATH_OR_HUB_ID`` where a Hugging Face Hub id is also accepted);
``resolve_recipe_paths`` turns each relative one into an absolute path when the
recipe is loaded, so every plugin reads the same file whatever the working
directory. The directories a run writes (``output_dir``, ``pairs.dir``) keep
the working directory, so ``prefopt run recipes/x.yaml`` from the project root
writes ``runs/...`` there, as the README shows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

RECIPE_PATH = {"recipe_path": "file"}
"""Mark a str / list[str] Config field as paths the recipe reads (relative: from the recipe's folder)."""

RECIPE_PATH_OR_HUB_ID = {"recipe_path": "file_or_hub_id"}
"""As RECIPE_PATH, but a value that is no file beside the recipe and looks like a Hub id stays a Hub id."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A name ending in one of these is a file, never a Hub id ("org/model-3.5-medium" is a Hub id).
_FILE_SUFFIXES = {".txt", ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".pt", ".pth", ".safetensors", ".bin"}


def _resolve_one(value: str, base_dir: Path, kind: str) -> str:
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    beside = base_dir / path
    looks_like_hub_id = _HUB_ID.match(value) and path.suffix.lower() not in _FILE_SUFFIXES
    if kind == "file_or_hub_id" and looks_like_hub_id and not beside.exists():
        return value
    return str(beside.resolve())


def _kind(model: type[BaseModel], name: str) -> str | None:
    extra = model.model_fields[name].json_schema_extra
    return extra.get("recipe_path") if isinstance(extra, dict) else None


def resolve_paths(model: BaseModel, base_dir: Path) -> BaseModel:
    """A copy of ``model`` (and the models inside it) with every marked relative path made absolute."""
    update: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        kind = _kind(type(model), name)
        if kind is not None and isinstance(value, str):
            update[name] = _resolve_one(value, base_dir, kind)
        elif kind is not None and isinstance(value, list):
            update[name] = [_resolve_one(v, base_dir, kind) if isinstance(v, str) else v for v in value]
        elif kind is not None and isinstance(value, dict):  # e.g. FID's {feature space: statistics file}
            update[name] = {k: _resolve_one(v, base_dir, kind) if isinstance(v, str) else v for k, v in value.items()}
        elif isinstance(value, BaseModel):
            update[name] = resolve_paths(value, base_dir)
        elif isinstance(value, list) and any(isinstance(v, BaseModel) for v in value):
            update[name] = [resolve_paths(v, base_dir) if isinstance(v, BaseModel) else v for v in value]
    return model.model_copy(update=update) if update else model


def resolve_recipe_paths(resolved, base_dir: Path):
    """The resolved recipe with the recipe's and every component Config's marked paths taken from ``base_dir``."""
    resolved.recipe = resolve_paths(resolved.recipe, base_dir)
    resolved.configs = {path: resolve_paths(config, base_dir) for path, config in resolved.configs.items()}
    return resolved

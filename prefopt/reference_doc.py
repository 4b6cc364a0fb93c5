"""Describe Config models as text: for ``prefopt plugins`` and docs/recipe-reference.md."""

from __future__ import annotations

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "")


def _default(field) -> str:
    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else repr(field.default_factory())
    value = field.default
    if isinstance(value, BaseModel):
        return "see section"
    return repr(value)


def describe_fields(config: type[BaseModel]) -> list[str]:
    """One line per field: ``name: type = default  # description``."""
    lines = []
    for name, field in config.model_fields.items():
        line = f"{name}: {_type_name(field.annotation)} = {_default(field)}"
        if field.description:
            line += f"  # {field.description}"
        lines.append(line)
    return lines or ["(no settings)"]


def recipe_reference_markdown(registry) -> str:
    """The whole recipe reference: top-level sections, then every plugin's Config."""
    from prefopt import recipe as recipe_module
    from prefopt.interfaces import KINDS

    out = [
        "# Recipe reference",
        "",
        "Generated from the pydantic models by `python -m prefopt.reference_doc`;",
        "do not edit by hand. Every field of every shipped plugin, with its default.",
        "",
    ]
    sections = [
        ("top level", recipe_module.Recipe),
        ("train", recipe_module.TrainConfig),
        ("pairs", recipe_module.PairsConfig),
        ("pairs.prompts", recipe_module.PromptsConfig),
        ("pretrain", recipe_module.PretrainConfig),
        ("compare", recipe_module.CompareConfig),
    ]
    for title, model in sections:
        out += [f"## `{title}`", "", "```"] + describe_fields(model) + ["```", ""]
    for kind in KINDS:
        out += [f"## {kind.replace('_', ' ')}s", ""]
        for name, cls in registry.all(kind).items():
            doc = (cls.__doc__ or "").strip().splitlines()
            out += [f"### `{name}`", "", doc[0] if doc else "", "", "```"]
            out += describe_fields(cls.Config) + ["```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    from pathlib import Path

    from prefopt.registry import PluginRegistry

    Path("docs/recipe-reference.md").write_text(recipe_reference_markdown(PluginRegistry()))
    print("wrote docs/recipe-reference.md")

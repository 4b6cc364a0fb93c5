"""``prefopt pairs show``: a pair dataset's first pairs decoded into a PNG grid, c beside c-."""

from __future__ import annotations

from pathlib import Path

from prefopt.checksums import read_json
from prefopt.errors import DataError
from prefopt.recipe import TrainConfig


def backbone_that_made(directory: Path, registry):
    """The backbone a pair dataset was built with, from its backbone.json."""
    from prefopt.data.pairset import MADE_WITH

    path = Path(directory) / MADE_WITH
    if not path.is_file():
        raise DataError(f"{directory} has no {MADE_WITH}; pass --recipe to say which backbone decodes it")
    made_with = read_json(path, "pair dataset record")
    if not (isinstance(made_with, dict) and isinstance(made_with.get("backbone"), str)
            and isinstance(made_with.get("config"), dict)):
        raise DataError(f"{path} is damaged (it needs a backbone name and a config mapping); pass --recipe to say "
                        "which backbone decodes it")
    cls = registry.get("backbone", made_with["backbone"], where=str(path))
    from pydantic import ValidationError

    try:
        return cls(cls.Config.model_validate(made_with["config"]))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "config"
        raise DataError(f"{path} is damaged ({where}: {first['msg']}); pass --recipe to say which backbone "
                        "decodes it") from None


def show_pairs(backbone, directory: Path, count: int = 8, output: Path | None = None) -> Path:
    """A PNG of the first ``count`` pairs: one row each, the winner under c and the loser under c-."""
    from prefopt.accelerate_setup import load_backbone
    from prefopt.data.pairset import PairDataset
    from prefopt.figures import image_grid

    dataset = PairDataset(directory, identity=backbone.data_signature())  # refused before minutes of loading
    accelerator = load_backbone(backbone, TrainConfig(), training=False)
    n = min(count, len(dataset))
    x0_w, x0_l, prompts, degraded = dataset.batch(range(n))
    winners, losers = backbone.decode(x0_w.to(accelerator.device)), backbone.decode(x0_l.to(accelerator.device))
    return image_grid([[winners[i], losers[i]] for i in range(n)], Path(output or Path(directory) / "pairs.png"),
                      cell_titles=[[f"c: {prompts[i][:60]}", f"c-: {degraded[i][:60]}"] for i in range(n)],
                      cell_inches=(3.0, 3.2), dpi=100)

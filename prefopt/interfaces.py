"""The seams of prefopt: Objective, PairSource, Backbone and Evaluator.

Every plugin is a class with a ``name``, a ``kind`` and a nested pydantic
``Config`` that forbids unknown keys, so a typo in a recipe fails before any
weight is loaded. Plugin modules must stay importable without torch: heavy
imports go inside methods (or sibling modules imported from methods), because
``prefopt validate`` reads every plugin's Config and must not import torch.

The small dataclasses below are what flows between the seams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Literal, Sequence

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from torch import nn


class PluginConfig(BaseModel):
    """Base of every plugin's Config: unknown keys are an error, not a no-op."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Plugin:
    """Common shape of a plugin: a registered name, a kind and a typed Config."""

    kind: ClassVar[str]
    name: ClassVar[str]
    Config: ClassVar[type[PluginConfig]] = PluginConfig

    def __init__(self, config: PluginConfig | None = None):
        self.config = config if config is not None else self.Config()


# ----------------------------------------------------------------------------
# Objectives: pure maths on predictions.
# ----------------------------------------------------------------------------

Latent = Literal["w", "l"]
PromptId = Literal["c", "c-"]
STUDENT = "student"
REFERENCE = "reference"


@dataclass(frozen=True)
class Prediction:
    """One denoiser output an objective needs.

    ``source`` is the model that predicts: ``student`` (trained, with grad),
    ``reference`` (frozen), or the name of an extra frozen policy a backbone
    was given (DD-CPP's winning/losing policies). ``latent`` picks x_t^w or
    x_t^l of the pair, ``prompt`` picks c or c-.
    """

    source: str
    latent: Latent
    prompt: PromptId


@dataclass
class ObjectiveInputs:
    """Everything an objective's loss sees for one step (batch of B pairs).

    ``predictions`` holds each requested Prediction, shape (B, ...).
    ``targets`` holds the backbone's regression target for "w" and "l"
    (ε, v or flow velocity), computed from the pair's shared noise.
    ``t_fraction`` is the timestep scaled to [0, 1] (1 = pure noise).
    ``weight`` is the backbone's per-pair loss weight (1 unless the backbone's
    weighting scheme says otherwise).
    ``reduce_mean`` averages a tensor across processes (identity on one).
    ``swapped`` marks the pairs whose prompts the objective's ``prompt_rewrite``
    replaced by an unpaired extra prompt this step (None: no rewrite).
    ``num_train_timesteps`` (T) and ``prediction_type`` ("epsilon",
    "v_prediction", "flow" or "sample") describe the backbone's forward process, for
    losses that scale by T (Diffusion-DPO's and MaPO's published forms); None
    when the backbone does not say.
    """

    predictions: dict[Prediction, "torch.Tensor"]
    targets: dict[str, "torch.Tensor"]
    t_fraction: "torch.Tensor"
    weight: "torch.Tensor"
    reduce_mean: Callable[["torch.Tensor"], "torch.Tensor"] = lambda x: x
    swapped: "torch.Tensor | None" = None
    num_train_timesteps: int | None = None
    prediction_type: str | None = None


@dataclass
class LossOutput:
    loss: "torch.Tensor"
    metrics: dict[str, float] = field(default_factory=dict)


class Objective(Plugin):
    """Turns predictions into a scalar loss; declares which predictions it needs."""

    kind: ClassVar[str] = "objective"

    def predictions(self) -> Sequence[Prediction]:
        """The predictions this objective reads, from every source."""
        raise NotImplementedError

    def policies(self) -> dict[str, str]:
        """Extra frozen policies (name -> weights path) the backbone must load."""
        return {}

    def independent_noise(self) -> bool:
        """True: x_t^w and x_t^l get separate noise draws; False (default): a pair shares its noise."""
        return False

    def prompt_rewrite(self, train_prompts: set[str]) -> "PromptRewrite | None":
        """Per-pair prompt changes the step draws before encoding (None: the stored prompts)."""
        return None

    def loss(self, inputs: ObjectiveInputs) -> LossOutput:
        raise NotImplementedError


@dataclass
class RewrittenPrompts:
    """A batch's prompts after a ``PromptRewrite``; ``swapped`` (bool, (B,)) marks replaced pairs."""

    prompts: list[str]
    degraded: list[str]
    swapped: "torch.Tensor"


class PromptRewrite:
    """Prompt changes drawn per pair and step (random-condition removal, prompt dropout)."""

    def texts(self) -> list[str]:
        """Every prompt the rewrite may put in, so a text cache can encode them up front."""
        raise NotImplementedError

    def __call__(
        self, prompts: Sequence[str], degraded: Sequence[str], t_fraction: "torch.Tensor", generator
    ) -> RewrittenPrompts:
        """Each pair's (c, c-) for this step, drawn with ``generator`` (t_fraction: the pairs' timesteps)."""
        raise NotImplementedError


# ----------------------------------------------------------------------------
# Pair sources: prompts in, preference material out.
# ----------------------------------------------------------------------------


@dataclass
class PromptPair:
    """One row of preference material before images exist.

    ``winner``/``loser`` are given x0 data (an image path, array or tensor in
    the backbone's data space) when the source has them (human-labelled pairs,
    ground-truth toy points); when None they are sampled by the backbone from
    ``prompt`` / ``degraded`` with ``seed``. ``loser_from`` names another row
    whose winner is reused as this row's loser (the paper's unpaired variants,
    Table 3b), so no negative image is generated.
    """

    prompt: str
    degraded: str
    seed: int
    winner: Any = None
    loser: Any = None
    loser_from: int | None = None


PairSourceNeed = Literal["prompts", "sampling", "images"]


class PairSource(Plugin):
    """Makes preference rows. ``needs`` says what the recipe must supply, checked before anything loads:

    * ``"prompts"``: ``pairs.prompts`` is set (the source is called with the prompt list);
    * ``"sampling"``: the backbone can sample images (the rows leave winner/loser to be drawn);
    * ``"images"``: the backbone trains on images (the rows carry image files as winner/loser).
    """

    kind: ClassVar[str] = "pair_source"
    needs: ClassVar[frozenset[PairSourceNeed]] = frozenset()

    def pairs(self, prompts: Sequence[str] | None, seed: int) -> Iterable[PromptPair]:
        """Preference rows for these prompts (None for sources that make their own).

        A list, or an iterator for sources too large to hold (the builder reads it
        once, one shard of rows at a time). Row i's seed and ``loser_from`` must
        not depend on how far the rows are read.
        """
        raise NotImplementedError


# ----------------------------------------------------------------------------
# Backbones: one model family behind one API.
# ----------------------------------------------------------------------------


@dataclass
class Runtime:
    """Where and how a backbone runs, decided by the engine (accelerate)."""

    device: "torch.device"
    dtype: "torch.dtype"
    train: bool = True  # False: load for sampling only (no student copy, no adapters)


Cond = dict  # str -> Tensor, batch first: a backbone's encoded prompts


class Backbone(Plugin):
    """Loading, forward process, prediction, sampling and saving of one family.

    Tensors are in the backbone's data space: latents for latent models,
    pixels for pixel models, points for the toy.
    """

    kind: ClassVar[str] = "backbone"
    data_space: ClassVar[str] = "images"
    """What x0 is: "images" (pixels or latents of images) or another space (the toy's "points")."""

    def load(self, runtime: Runtime, policies: dict[str, str] | None = None) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What would be loaded and trained, without loading it (dry runs)."""
        return dict(self.config.model_dump())

    def data_signature(self) -> dict[str, Any]:
        """What a pair dataset must match: family name and data shape."""
        raise NotImplementedError

    def trainable_module(self) -> "nn.Module":
        raise NotImplementedError

    def set_trainable_module(self, module: "nn.Module") -> None:
        """Hand back the module after accelerate wrapped it."""
        raise NotImplementedError

    def trainable_parameters(self) -> Iterable["torch.nn.Parameter"]:
        return [p for p in self.trainable_module().parameters() if p.requires_grad]

    def adopt_student_state(self, state_dict: dict) -> None:
        """Take the student's full weights, gathered by the engine after training under FSDP or
        DeepSpeed ZeRO-3, into a plain (unsharded) student for saving and evaluation."""
        from prefopt.errors import PrefoptError

        raise PrefoptError(f"the {self.name} backbone cannot be trained sharded (FSDP / ZeRO-3)")

    def release_idle(self, sources: Iterable[str], text_cached: bool) -> None:
        """Told before the first step which prediction sources training asks for and whether
        prompts come from a text cache: a backbone may move what stays idle off the accelerator
        (or free it), as long as whatever later needs it (sampling, decoding, saving) brings it back."""

    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        raise NotImplementedError

    def encode_data(self, items: Sequence[Any]) -> "torch.Tensor":
        """Given x0 data (images, arrays) into the backbone's data space."""
        raise NotImplementedError

    def sample_timesteps(self, n: int, generator: "torch.Generator") -> "torch.Tensor":
        raise NotImplementedError

    def t_fraction(self, t: "torch.Tensor") -> "torch.Tensor":
        raise NotImplementedError

    def add_noise(self, x0, noise, t) -> "torch.Tensor":
        raise NotImplementedError

    def regression_target(self, x0, noise, t) -> "torch.Tensor":
        raise NotImplementedError

    def num_train_timesteps(self) -> int | None:
        """T of the forward process once loaded (objectives see it in ObjectiveInputs); None: not defined."""
        return None

    def prediction_type(self) -> str | None:
        """What ``predict`` returns: "epsilon", "v_prediction", "flow" (velocity) or "sample" (x0); None: not said."""
        return None

    def can_sample(self) -> bool:
        """Whether ``sample`` is implemented, so pair sources that leave images to be drawn can use it."""
        return type(self).sample is not Backbone.sample

    def check_sources(self, sources: set[str]) -> None:
        """Raise a PrefoptError if these settings cannot give predictions from ``sources``.

        Called before anything is loaded (``validate``, ``--dry-run``, ``run``) with
        the sources the objective reads (``STUDENT``, ``REFERENCE``, policy names).
        """

    def loss_weight(self, t: "torch.Tensor") -> "torch.Tensor":
        import torch

        return torch.ones(t.shape[0], device=t.device)

    def predict(self, x_t, t, cond: Cond, source: str) -> "torch.Tensor":
        raise NotImplementedError

    def sample(
        self, prompts: Sequence[str], seeds: Sequence[int], source: str = REFERENCE
    ) -> "torch.Tensor":
        """x0 drawn from ``source`` for each prompt, each row seeded by its seed."""
        raise NotImplementedError

    def save(self, directory: str) -> None:
        """Write the trained model in the form the family's diffusers pipeline loads."""
        raise NotImplementedError

    def load_trained(self, directory: str) -> None:
        """Load what ``save`` wrote into the student (the reference stays as loaded)."""
        raise NotImplementedError

    def decode(self, x0) -> list:
        """x0 in data space to viewable images (PIL), for pair grids and sample sheets."""
        from prefopt.errors import PrefoptError

        raise PrefoptError(f"the {self.name} backbone has no images to decode")


# ----------------------------------------------------------------------------
# Evaluators: score the trained model.
# ----------------------------------------------------------------------------


class Evaluator(Plugin):
    kind: ClassVar[str] = "evaluator"

    def check(self) -> None:
        """Called before training (and by ``validate``): raise a PrefoptError for a file it needs that is
        missing or malformed, so the run fails before any step. Must not import torch."""

    def evaluate(self, backbone: Backbone, run_dir: str, seed: int) -> dict[str, float]:
        raise NotImplementedError


KINDS: dict[str, type[Plugin]] = {
    "objective": Objective,
    "pair_source": PairSource,
    "backbone": Backbone,
    "evaluator": Evaluator,
}

"""The objective plugins: what they ask for, what their Configs accept, what they return."""

import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError

from prefopt.interfaces import REFERENCE, STUDENT, Objective, ObjectiveInputs, Prediction
from prefopt.registry import PluginRegistry
from prefopt_objectives import plugin
from prefopt_objectives.ddspo import DDSPO
from prefopt_objectives.denoise import Denoise
from prefopt_objectives.diffusion_dpo import DiffusionDPO
from prefopt_objectives.diffusion_kto import DiffusionKTO

ALL = [DDSPO, DiffusionDPO, DiffusionKTO, Denoise]


def P(source, latent, prompt):
    return Prediction(source, latent, prompt)


def test_objective_modules_import_without_torch():
    code = "import prefopt_objectives.plugin, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plugin_registers_the_four_objectives():
    registry = PluginRegistry(modules=[plugin], autoload=False)
    assert registry.names("objective") == ["ddspo", "denoise", "diffusion_dpo", "diffusion_kto"]


@pytest.mark.parametrize("cls", ALL)
def test_each_objective_is_documented(cls):
    assert issubclass(cls, Objective)
    assert cls.__doc__.strip().splitlines()[0]
    for name, field in cls.Config.model_fields.items():
        assert field.description, f"{cls.name}.{name} has no description"


# --------------------------------------------------------------------------- predictions


def test_ddspo_predictions():
    assert set(DDSPO().predictions()) == {
        P(STUDENT, "w", "c"),
        P(STUDENT, "l", "c"),
        P(REFERENCE, "w", "c"),
        P(REFERENCE, "l", "c-"),
        P(REFERENCE, "l", "c"),
    }
    assert DDSPO().policies() == {}


def test_ddspo_with_policies_predictions():
    objective = DDSPO(DDSPO.Config(winner_policy="pos_lora", loser_policy="neg_lora"))
    assert set(objective.predictions()) == {
        P(STUDENT, "w", "c"),
        P(STUDENT, "l", "c"),
        P("policy_w", "w", "c"),
        P("policy_l", "l", "c"),
        P(REFERENCE, "w", "c"),
        P(REFERENCE, "l", "c"),
    }
    assert objective.policies() == {"policy_w": "pos_lora", "policy_l": "neg_lora"}


@pytest.mark.parametrize("cls", [DiffusionDPO, DiffusionKTO])
def test_dpo_and_kto_predictions(cls):
    assert set(cls().predictions()) == {
        P(STUDENT, "w", "c"),
        P(STUDENT, "l", "c"),
        P(REFERENCE, "w", "c"),
        P(REFERENCE, "l", "c"),
    }
    assert cls().policies() == {}


def test_denoise_predictions():
    assert set(Denoise().predictions()) == {P(STUDENT, "w", "c")}
    # DD-CPP's losing policy fits the losers, still conditioned on c.
    assert set(Denoise(Denoise.Config(side="loser")).predictions()) == {P(STUDENT, "l", "c")}


# --------------------------------------------------------------------------- Configs


@pytest.mark.parametrize("cls", ALL)
def test_config_rejects_unknown_keys(cls):
    with pytest.raises(ValidationError):
        cls.Config(bta=1.0)


@pytest.mark.parametrize("cls", [DDSPO, DiffusionDPO, DiffusionKTO])
@pytest.mark.parametrize("beta", [0.0, -5.0])
def test_config_rejects_non_positive_beta(cls, beta):
    with pytest.raises(ValidationError):
        cls.Config(beta=beta)


def test_published_defaults():
    assert DDSPO.Config().beta == 16000
    assert DiffusionDPO.Config().beta == 5000
    assert DiffusionKTO.Config().beta == 1000


def test_config_rejects_unknown_loss_type_and_weighting():
    with pytest.raises(ValidationError):
        DiffusionDPO.Config(loss_type="logistic")
    with pytest.raises(ValidationError):
        DDSPO.Config(weighting="cosine")


@pytest.mark.parametrize("policies", [{"winner_policy": "pos"}, {"loser_policy": "neg"}])
def test_dd_cpp_needs_both_policies(policies):
    with pytest.raises(ValidationError, match="both"):
        DDSPO.Config(**policies)


# --------------------------------------------------------------------------- loss outputs


def _inputs(objective, batch=3):
    g = torch.Generator().manual_seed(1)
    predictions = {
        p: torch.randn(batch, 2, 4, 4, generator=g, requires_grad=p.source == STUDENT)
        for p in objective.predictions()
    }
    return ObjectiveInputs(
        predictions=predictions,
        targets={"w": torch.randn(batch, 2, 4, 4, generator=g), "l": torch.randn(batch, 2, 4, 4, generator=g)},
        t_fraction=torch.rand(batch, generator=g),
        weight=torch.ones(batch),
    )


PREFERENCE_METRICS = {
    "loss",
    "pref/accuracy",
    "pref/margin",
    "mse/student_w",
    "mse/student_l",
    "mse/ref_w",
    "mse/ref_l",
}


@pytest.mark.parametrize(
    "objective, extra_metrics",
    [
        # Small β: random predictions are far apart, and a published β would saturate the sigmoid.
        (DDSPO(DDSPO.Config(beta=0.1)), {"pref/logit"}),
        (DDSPO(DDSPO.Config(beta=0.1, winner_policy="a", loser_policy="b", weighting="linear")), {"pref/logit"}),
        (DiffusionDPO(DiffusionDPO.Config(beta=0.1, loss_type="hinge")), {"pref/logit"}),
        (DiffusionKTO(DiffusionKTO.Config(beta=0.1)), {"kto/kl", "kto/g_desirable", "kto/g_undesirable"}),
    ],
)
def test_preference_objectives_return_a_differentiable_loss_and_float_metrics(objective, extra_metrics):
    inputs = _inputs(objective)
    out = objective.loss(inputs)
    assert out.loss.ndim == 0
    out.loss.backward()
    for prediction, tensor in inputs.predictions.items():
        if prediction.source == STUDENT:
            assert tensor.grad is not None and tensor.grad.abs().sum() > 0
    assert set(out.metrics) == PREFERENCE_METRICS | extra_metrics
    assert all(type(v) is float for v in out.metrics.values())
    assert out.metrics["loss"] == pytest.approx(out.loss.item())


def test_denoise_worked_example():
    # target [1, 3], student [0, 0] -> ‖·‖² = (1 + 9)/2 = 5 ; weight 2 -> loss 10
    student = torch.zeros(1, 1, 2, requires_grad=True)
    inputs = ObjectiveInputs(
        predictions={P(STUDENT, "w", "c"): student},
        targets={"w": torch.tensor([[[1.0, 3.0]]])},
        t_fraction=torch.tensor([0.5]),
        weight=torch.tensor([2.0]),
    )
    out = Denoise().loss(inputs)
    assert out.loss.item() == pytest.approx(10.0)
    assert out.metrics == {"loss": pytest.approx(10.0), "mse/student_w": pytest.approx(5.0)}


def test_kto_uses_reduce_mean_for_its_kl():
    objective = DiffusionKTO()
    inputs = _inputs(objective)
    inputs.reduce_mean = lambda x: x * 0 + 7.0  # as if the other processes dominated the mean
    assert objective.loss(inputs).metrics["kto/kl"] == pytest.approx(7.0)

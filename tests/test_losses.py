"""Worked examples for the loss maths of prefopt_objectives (DDSPO paper Eq. 4, 6, 7)."""

import math

import pytest
import torch

from prefopt.interfaces import ObjectiveInputs
from prefopt_objectives import losses
from prefopt_objectives.ddspo import DDSPO
from prefopt_objectives.diffusion_dpo import DiffusionDPO
from prefopt_objectives.predictions import REF_L, REF_L_NEG, REF_W, STUDENT_L, STUDENT_W

LN2 = math.log(2.0)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


# --------------------------------------------------------------------------- per-sample error


def test_per_sample_mse_means_over_every_non_batch_dim():
    a = torch.tensor([[[1.0, 2.0]], [[3.0, 5.0]]])  # shape (2, 1, 2)
    b = torch.zeros(2, 1, 2)
    # pair 0: (1² + 2²) / 2 = 2.5 ; pair 1: (3² + 5²) / 2 = 17
    out = losses.per_sample_mse(a, b)
    assert out.shape == (2,)
    assert torch.allclose(out, torch.tensor([2.5, 17.0]))


def test_per_sample_mse_upcasts_half_precision():
    a = torch.ones(2, 3, dtype=torch.bfloat16)
    assert losses.per_sample_mse(a, a * 0).dtype == torch.float32


# --------------------------------------------------------------------------- preference losses


def test_logit_is_minus_half_beta_delta():
    # β convention: logit = −β/2 · Δ, so Eq. 4/7's β is half the recipe's β.
    assert losses.preference_logit(t(0.5), beta=4.0).item() == pytest.approx(-1.0)
    beta, delta = 16000.0, t(1e-4, -3e-4)
    paper_beta = beta / 2
    expected = -torch.nn.functional.logsigmoid(-paper_beta * delta)  # Eq. 7 as printed
    assert torch.allclose(losses.preference_loss(delta, beta, "sigmoid"), expected)


def test_sigmoid_loss_worked_example():
    # β = 2000, Δ = [0, 0.001] -> logit = −1000·Δ = [0, −1]
    # −log σ(0) = ln 2 = 0.693147 ; −log σ(−1) = ln(1 + e) = 1.313262
    per_pair = losses.preference_loss(t(0.0, 0.001), beta=2000.0, loss_type="sigmoid")
    assert torch.allclose(per_pair, t(0.693147, 1.313262), atol=1e-6)


def test_loss_is_mean_of_per_pair_losses_not_loss_of_mean():
    # Same example: mean of per-pair losses = (0.693147 + 1.313262) / 2 = 1.003204.
    # Averaging first would give −log σ(−0.5) = ln(1 + e^0.5) = 0.974077.
    loss = losses.preference_loss(t(0.0, 0.001), beta=2000.0).mean()
    assert loss.item() == pytest.approx(1.003204, abs=1e-6)
    assert loss.item() != pytest.approx(0.974077, abs=1e-3)


def test_hinge_loss_worked_example():
    # β = 2000, Δ = [0, 0.001, −0.002] -> logit = [0, −1, 2] -> max(0, 1 − logit) = [1, 2, 0]
    per_pair = losses.preference_loss(t(0.0, 0.001, -0.002), beta=2000.0, loss_type="hinge")
    assert torch.allclose(per_pair, t(1.0, 2.0, 0.0))


def test_ipo_loss_worked_example():
    # β = 2000: h = −Δ/2, target 1/(2β) = 0.00025.
    # Δ = 0      -> h = 0     -> (0 − 0.00025)²     = 6.25e-8
    # Δ = −0.002 -> h = 0.001 -> (0.001 − 0.00025)² = 5.625e-7
    per_pair = losses.preference_loss(t(0.0, -0.002), beta=2000.0, loss_type="ipo")
    assert torch.allclose(per_pair, t(6.25e-8, 5.625e-7), rtol=1e-9, atol=0)


def test_unknown_loss_type_is_an_error():
    with pytest.raises(ValueError, match="loss_type"):
        losses.preference_loss(t(0.0), 1.0, "dpo")


def test_implicit_accuracy_counts_ties_as_half():
    # Δ = [−1, 0, 2, −3]: wins 1 + 0.5 + 0 + 1 = 2.5 of 4
    assert losses.implicit_accuracy(t(-1.0, 0.0, 2.0, -3.0)).item() == pytest.approx(0.625)


# --------------------------------------------------------------------------- Eq. 4 and Eq. 7 terms


def test_pair_errors_delta_worked_example():
    # Shapes (1, 1, 2). Errors against the targets (zeros):
    # student_w = (1 + 1)/2 = 1, ref_w = (4 + 0)/2 = 2, student_l = (0 + 4)/2 = 2, ref_l = (1 + 1)/2 = 1
    # Δ = (1 − 2) − (2 − 1) = −2
    zero = torch.zeros(1, 1, 2)
    raw = losses.pair_errors(
        student_w=torch.tensor([[[1.0, -1.0]]]),
        ref_w=torch.tensor([[[2.0, 0.0]]]),
        student_l=torch.tensor([[[0.0, 2.0]]]),
        ref_l=torch.tensor([[[1.0, 1.0]]]),
        target_w=zero,
        target_l=zero,
    )
    assert raw.delta().item() == pytest.approx(-2.0)
    assert raw.scaled(torch.tensor([3.0])).delta().item() == pytest.approx(-6.0)


def _ddspo_example(ref_l):
    # student_w = [1, 1] vs target ε_ref(w,c) = [0, 0]:       ‖·‖² = 1
    # student_l = [2, 0] vs loser target ε_ref(l,c-) = [0, 0]: ‖·‖² = (4 + 0)/2 = 2
    return losses.ddspo_terms(
        student_w=torch.tensor([[[1.0, 1.0]]]),
        student_l=torch.tensor([[[2.0, 0.0]]]),
        ref_w=torch.zeros(1, 1, 2),
        ref_l=torch.tensor([[ref_l]]),
        loser_target=torch.zeros(1, 1, 2),
    )


def test_ddspo_winner_reference_term_is_zero():
    raw = _ddspo_example([1.0, 1.0])
    assert torch.equal(raw.ref_w, torch.zeros(1))
    assert raw.student_w.item() == pytest.approx(1.0)


def test_ddspo_eq7_loser_reference_term():
    # ε_ref(l,c) = [1, 1]: ref_l = ‖0 − ε_ref(l,c)‖² = 1 -> Δ = (1 − 0) − (2 − 1) = 0
    assert _ddspo_example([1.0, 1.0]).delta().item() == pytest.approx(0.0)
    # ε_ref(l,c) = [3, 1]: ref_l = (9 + 1)/2 = 5 -> Δ = (1 − 0) − (2 − 5) = 4
    # The reference moved away from the degraded target, so the student now looks
    # relatively closer to it and is penalised: with β = 0.5, logit = −0.25·4 = −1,
    # loss = ln(1 + e) = 1.313262.
    raw = _ddspo_example([3.0, 1.0])
    assert raw.delta().item() == pytest.approx(4.0)
    assert losses.preference_loss(raw.delta(), beta=0.5).item() == pytest.approx(1.313262, abs=1e-6)


def test_ddspo_with_policies_has_a_winner_reference_term():
    # DD-CPP (Eq. 6): winner target ε_w(x_t^w, c) = [1, 0], ε_ref(x_t^w, c) = [0, 0] -> ref_w = 0.5
    raw = losses.ddspo_terms(
        student_w=torch.zeros(1, 1, 2),
        student_l=torch.zeros(1, 1, 2),
        ref_w=torch.zeros(1, 1, 2),
        ref_l=torch.zeros(1, 1, 2),
        loser_target=torch.zeros(1, 1, 2),
        winner_target=torch.tensor([[[1.0, 0.0]]]),
    )
    assert raw.ref_w.item() == pytest.approx(0.5)
    assert raw.student_w.item() == pytest.approx(0.5)


def test_linear_t_weight_is_t_fraction():
    tf = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(losses.t_weight(tf, "none"), torch.ones(3))
    assert torch.equal(losses.t_weight(tf, "linear"), tf)


# --------------------------------------------------------------------------- ln 2 at initialisation


def _random_inputs(predictions, generator, batch=4, shape=(4, 8, 8)):
    def rand():
        return torch.randn(batch, *shape, generator=generator)

    return ObjectiveInputs(
        predictions=predictions,
        targets={"w": rand(), "l": rand()},
        t_fraction=torch.rand(batch, generator=generator),
        weight=torch.rand(batch, generator=generator) + 0.5,
    )


@pytest.mark.parametrize("beta", [5000.0, 1.0])
def test_dpo_is_ln2_when_student_equals_reference(beta):
    g = torch.Generator().manual_seed(0)
    x_w, x_l = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    inputs = _random_inputs({STUDENT_W: x_w, STUDENT_L: x_l, REF_W: x_w.clone(), REF_L: x_l.clone()}, g)
    out = DiffusionDPO(DiffusionDPO.Config(beta=beta)).loss(inputs)
    assert out.loss.item() == pytest.approx(LN2, abs=1e-6)
    assert out.metrics["pref/accuracy"] == 0.5


def _ddspo_inputs_at_init(seed=0):
    g = torch.Generator().manual_seed(seed)
    x_w, x_l, x_neg = (torch.randn(4, 4, 8, 8, generator=g) for _ in range(3))
    predictions = {STUDENT_W: x_w, STUDENT_L: x_l, REF_W: x_w.clone(), REF_L: x_l.clone(), REF_L_NEG: x_neg}
    return _random_inputs(predictions, g)


def test_ddspo_is_ln2_when_student_equals_reference():
    out = DDSPO(DDSPO.Config()).loss(_ddspo_inputs_at_init())
    assert out.loss.item() == pytest.approx(LN2, abs=1e-6)
    assert out.metrics["mse/ref_w"] == 0.0


def test_ddspo_linear_weighting_scales_each_pair_loss():
    # At initialisation every pair's loss is ln 2, so the weighted mean is ln 2 · mean(t_fraction).
    inputs = _ddspo_inputs_at_init()
    out = DDSPO(DDSPO.Config(weighting="linear")).loss(inputs)
    assert out.loss.item() == pytest.approx(LN2 * inputs.t_fraction.mean().item(), abs=1e-6)


# --------------------------------------------------------------------------- Diffusion-KTO


def test_kto_loss_worked_example():
    # β = 1000, λ_D = 1, λ_U = 2, g = [0.001, −0.002] (desirable, undesirable)
    g, desirable = t(0.001, -0.002), torch.tensor([True, False])
    # KL = 0:      desirable   1 · (1 − σ(1000 · 0.001))       = 1 − σ(1) = 0.268941
    #              undesirable 2 · (1 − σ(−1000 · −0.002))     = 2 · (1 − σ(2)) = 0.238406
    out = losses.kto_loss(g, desirable, torch.tensor(0.0), beta=1000.0, lambda_d=1.0, lambda_u=2.0)
    assert torch.allclose(out, t(0.268941, 0.238406), atol=1e-6)
    # KL = 0.0005: desirable   1 − σ(1000 · 0.0005)            = 1 − σ(0.5) = 0.377541
    #              undesirable 2 · (1 − σ(−1000 · −0.0025))    = 2 · (1 − σ(2.5)) = 0.151716
    out = losses.kto_loss(g, desirable, torch.tensor(0.0005), beta=1000.0, lambda_d=1.0, lambda_u=2.0)
    assert torch.allclose(out, t(0.377541, 0.151716), atol=1e-6)


def test_kto_kl_baseline_is_detached():
    g = torch.tensor([1.0, 2.0], requires_grad=True)
    kl = losses.kto_kl_baseline(g, lambda x: x)
    assert kl.item() == pytest.approx(1.5)
    assert not kl.requires_grad


def test_kto_kl_baseline_is_clamped_at_zero():
    assert losses.kto_kl_baseline(torch.tensor([1.0, -3.0]), lambda x: x).item() == 0.0


def test_kto_kl_baseline_averages_across_processes_before_clamping():
    g = torch.tensor([1.0, -3.0])  # this process: mean −1

    def with_other_process(mean_of_other):
        return lambda x: (x + mean_of_other) / 2  # a two-process all-reduce mean

    # other process 3.0: (−1 + 3)/2 = 1
    assert losses.kto_kl_baseline(g, with_other_process(3.0)).item() == pytest.approx(1.0)
    # other process 0.5: (−1 + 0.5)/2 = −0.25 -> clamped to 0 (clamping first would give 0.25)
    assert losses.kto_kl_baseline(g, with_other_process(0.5)).item() == 0.0

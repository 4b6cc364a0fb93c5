"""The maths of prefopt's first-party objectives: pure torch, no plugin machinery.

Equation numbers are those of the DDSPO paper (docs/objectives.md restates
them): Eq. 4 is Diffusion-DPO, Eq. 6 is DDSPO with given winning/losing
targets, Eq. 7 is DDSPO with targets from the reference on c and c-.

Conventions (docs/objectives.md):

* a per-sample squared error is the mean over all non-batch dims;
* Δ = (student_w − ref_w) − (student_l − ref_l) per pair, from those errors;
* the preference logit is −β/2 · Δ, so the β published with the Diffusion-DPO
  and DDSPO code transfers unchanged (the paper's Eq. 4/7 write −β · Δ, i.e.
  β_paper = β/2);
* losses are returned per pair (or per sample); callers take the mean, so a
  loss is always a mean of per-pair losses, never a loss of a mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

LossType = Literal["sigmoid", "hinge", "ipo"]
Weighting = Literal["none", "linear"]


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖a − b‖² as a mean over every non-batch dim: shape (B,).

    The squared norms of Eq. 4/6/7, normalised by the data size so that β does
    not depend on resolution. Half-precision inputs are upcast first: Δ is a
    small difference of nearly equal errors, and β (thousands) magnifies any
    rounding in it.
    """
    dtype = torch.promote_types(a.dtype, torch.float32)
    diff = a.to(dtype) - b.to(dtype)
    return diff.pow(2).flatten(1).mean(dim=1)


@dataclass(frozen=True)
class PairErrors:
    """The four per-pair squared errors of Eq. 4/6/7, each of shape (B,)."""

    student_w: torch.Tensor
    student_l: torch.Tensor
    ref_w: torch.Tensor
    ref_l: torch.Tensor

    def scaled(self, weight: torch.Tensor) -> "PairErrors":
        """Every error times a per-pair weight (the backbone's loss weight)."""
        return PairErrors(
            self.student_w * weight, self.student_l * weight, self.ref_w * weight, self.ref_l * weight
        )

    def where(self, mask: torch.Tensor, other: "PairErrors") -> "PairErrors":
        """Per pair: ``other``'s errors where ``mask`` (bool, (B,)) is true, these elsewhere."""
        return PairErrors(
            *(torch.where(mask, theirs, mine) for mine, theirs in
              zip((self.student_w, self.student_l, self.ref_w, self.ref_l),
                  (other.student_w, other.student_l, other.ref_w, other.ref_l)))
        )

    def delta(self) -> torch.Tensor:
        """Δ = (student_w − ref_w) − (student_l − ref_l): the bracket of Eq. 4/6/7.

        Negative when the student, relative to the reference, fits the winner
        better than the loser.
        """
        return (self.student_w - self.ref_w) - (self.student_l - self.ref_l)


def pair_errors(
    *,
    student_w: torch.Tensor,
    student_l: torch.Tensor,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
    target_w: torch.Tensor,
    target_l: torch.Tensor,
) -> PairErrors:
    """Errors of Eq. 4 (targets = the backbone's ε / v / flow target) or Eq. 6 (given targets).

    Student and reference predictions are both at (x_t^w, c) and (x_t^l, c);
    each is compared with the target of its latent.
    """
    return PairErrors(
        student_w=per_sample_mse(target_w, student_w),
        student_l=per_sample_mse(target_l, student_l),
        ref_w=per_sample_mse(target_w, ref_w),
        ref_l=per_sample_mse(target_l, ref_l),
    )


def ddspo_terms(
    *,
    student_w: torch.Tensor,
    student_l: torch.Tensor,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
    loser_target: torch.Tensor,
    winner_target: torch.Tensor | None = None,
) -> PairErrors:
    """Errors of DDSPO, Eq. 7 (or Eq. 6 when a winner target is given).

    Eq. 7: the winner target is ε_ref(x_t^w, c) itself (``ref_w``) and the
    loser target is ε_ref(x_t^l, c-) (``loser_target``):

        student_w = ‖ε_ref(x_t^w,c)  − ε_θ(x_t^w,c)‖²
        ref_w     = ‖ε_ref(x_t^w,c)  − ε_ref(x_t^w,c)‖² = 0
        student_l = ‖ε_ref(x_t^l,c-) − ε_θ(x_t^l,c)‖²
        ref_l     = ‖ε_ref(x_t^l,c-) − ε_ref(x_t^l,c)‖²

    The winner's reference term is zero by construction, so it is written as
    zeros instead of being computed. With ``winner_target`` (DD-CPP: the
    winning policy's ε_w(x_t^w, c), and ``loser_target`` the losing policy's
    ε_l(x_t^l, c)) this is Eq. 6 and the winner's reference term is not zero.
    """
    if winner_target is not None:
        return pair_errors(
            student_w=student_w,
            student_l=student_l,
            ref_w=ref_w,
            ref_l=ref_l,
            target_w=winner_target,
            target_l=loser_target,
        )
    student_w_err = per_sample_mse(ref_w, student_w)
    return PairErrors(
        student_w=student_w_err,
        student_l=per_sample_mse(loser_target, student_l),
        ref_w=torch.zeros_like(student_w_err),
        ref_l=per_sample_mse(loser_target, ref_l),
    )


def preference_logit(delta: torch.Tensor, beta: float) -> torch.Tensor:
    """The Bradley–Terry logit of Eq. 4/7 in prefopt's β convention: −β/2 · Δ."""
    return -0.5 * beta * delta


def _sigmoid(logit: torch.Tensor, beta: float) -> torch.Tensor:
    return -F.logsigmoid(logit)


def _hinge(logit: torch.Tensor, beta: float) -> torch.Tensor:
    return torch.relu(1.0 - logit)


def _ipo(logit: torch.Tensor, beta: float) -> torch.Tensor:
    # IPO (Azar et al., Eq. 17) regresses the *unscaled* log-ratio margin h onto
    # 1/(2β). Here h = logit / β = −Δ/2, the same h the sigmoid loss scales by β.
    return (logit / beta - 1.0 / (2.0 * beta)) ** 2


_LOSSES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "sigmoid": _sigmoid,
    "hinge": _hinge,
    "ipo": _ipo,
}


def preference_loss(delta: torch.Tensor, beta: float, loss_type: LossType = "sigmoid") -> torch.Tensor:
    """Per-pair preference loss of Eq. 4/6/7 from Δ, shape (B,); the caller takes the mean.

    With logit = −β/2 · Δ:

        sigmoid: −log σ(logit)                 (Eq. 4/7; ln 2 at Δ = 0)
        hinge:   max(0, 1 − logit)
        ipo:     (logit/β − 1/(2β))² = (−Δ/2 − 1/(2β))²
    """
    if loss_type not in _LOSSES:
        raise ValueError(f"unknown loss_type {loss_type!r} (one of {', '.join(_LOSSES)})")
    return _LOSSES[loss_type](preference_logit(delta, beta), beta)


def implicit_accuracy(delta: torch.Tensor) -> torch.Tensor:
    """Share of pairs whose Δ < 0 (the student prefers the winner more than the reference does).

    A tie (Δ == 0, e.g. every pair at initialisation) counts one half, so an
    untrained student reads 0.5 (the official DDSPO code counts ties as 0).
    """
    return ((delta < 0).float() + 0.5 * (delta == 0).float()).mean()


def t_weight(t_fraction: torch.Tensor, weighting: Weighting) -> torch.Tensor:
    """Per-pair weight of the DDSPO loss over timesteps (t_fraction: 0 clean, 1 pure noise).

    ``none``: 1. ``linear``: t_fraction, i.e. t/(T−1) as in the official DDSPO
    code's SDXL run, which multiplies each pair's loss (not its errors) by it:
    more weight at high noise, mean 1/2 over uniform t, so the published
    learning rate of that run transfers unchanged.
    """
    if weighting == "none":
        return torch.ones_like(t_fraction, dtype=torch.float32)
    if weighting == "linear":
        return t_fraction.float()
    raise ValueError(f"unknown weighting {weighting!r} (one of none, linear)")


def kto_kl_baseline(g: torch.Tensor, reduce_mean: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Diffusion-KTO's reference point z0: the KL estimate, a scalar without grad.

    The mean of g over this process's batch, averaged across processes with
    ``reduce_mean``, then clamped at 0 (mean first, then clamp: a KL is never
    negative, but per-process means may be). Detached, so no gradient flows
    through the baseline.
    """
    return reduce_mean(g.detach().mean()).clamp(min=0).detach()


def kto_loss(
    g: torch.Tensor,
    desirable_mask: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    lambda_d: float,
    lambda_u: float,
) -> torch.Tensor:
    """Per-sample Diffusion-KTO loss w_y · (1 − σ(sign_y · β · (g − KL))), shape (N,).

    g = ref_mse − model_mse (positive when the student denoises the sample
    better than the reference); sign_y = +1 for desirable samples, −1 for
    undesirable; w_y = λ_D or λ_U. The caller takes the mean.
    """
    sign = desirable_mask.float() * 2.0 - 1.0
    weight = torch.where(desirable_mask, lambda_d, lambda_u).to(g.dtype)
    return weight * (1.0 - torch.sigmoid(sign * beta * (g - kl)))


def as_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scalar tensors to floats in one device transfer (one sync, not one per metric)."""
    numbers = torch.stack([v.detach().float().reshape(()) for v in values.values()]).tolist()
    return dict(zip(values, numbers))


def error_metrics(raw: PairErrors) -> dict[str, torch.Tensor]:
    """Batch means of the unweighted per-branch errors: mse/student_w, ..., mse/ref_l."""
    return {
        "mse/student_w": raw.student_w.mean(),
        "mse/student_l": raw.student_l.mean(),
        "mse/ref_w": raw.ref_w.mean(),
        "mse/ref_l": raw.ref_l.mean(),
    }


@torch.no_grad()
def preference_metrics(loss: torch.Tensor, raw: PairErrors, delta: torch.Tensor, beta: float) -> dict[str, float]:
    """Logged metrics of a DPO-style objective.

    ``pref/margin`` is the mean of −Δ (β-free, positive when the student
    prefers winners more than the reference), ``pref/logit`` the mean of
    −β/2 · Δ; both use the weighted Δ the loss saw. The ``mse/*`` metrics are
    the raw, unweighted errors.
    """
    return as_floats(
        {
            "loss": loss,
            "pref/accuracy": implicit_accuracy(delta),
            "pref/margin": (-delta).mean(),
            "pref/logit": preference_logit(delta, beta).mean(),
            **error_metrics(raw),
        }
    )

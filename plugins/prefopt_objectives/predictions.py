"""The predictions objectives ask for, named once (no torch here: see interfaces.py)."""

from typing import Literal

from pydantic import Field

from prefopt.interfaces import REFERENCE, STUDENT, Prediction

STUDENT_W = Prediction(STUDENT, "w", "c")  # ε_θ(x_t^w, c)
STUDENT_L = Prediction(STUDENT, "l", "c")  # ε_θ(x_t^l, c)
REF_W = Prediction(REFERENCE, "w", "c")  # ε_ref(x_t^w, c)
REF_L = Prediction(REFERENCE, "l", "c")  # ε_ref(x_t^l, c)
REF_L_NEG = Prediction(REFERENCE, "l", "c-")  # ε_ref(x_t^l, c-): DDSPO's losing target

# Diffusion-DPO and Diffusion-KTO: student and reference, each on both latents.
STUDENT_AND_REF = (STUDENT_W, STUDENT_L, REF_W, REF_L)

# How a pair's two noisy latents are drawn (the timestep is always shared).
PairNoise = Literal["shared", "independent"]


def noise_field():
    """The ``noise`` setting of the paired objectives."""
    return Field(
        "shared",
        description="shared: x_t^w and x_t^l from one noise draw; independent: one each "
        "(official DDSPO --pos_neg_different_noise)",
    )


def target_errors(inputs):
    """The ``STUDENT_AND_REF`` predictions' errors against the backbone's target of each latent (Eq. 4).

    A ``losses.PairErrors``; torch is imported only when it is called, from a loss.
    """
    from prefopt_objectives import losses

    p = inputs.predictions
    return losses.pair_errors(
        student_w=p[STUDENT_W],
        student_l=p[STUDENT_L],
        ref_w=p[REF_W],
        ref_l=p[REF_L],
        target_w=inputs.targets["w"],
        target_l=inputs.targets["l"],
    )

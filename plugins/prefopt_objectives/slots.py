"""The predictions objectives ask for, named once (no torch here: see interfaces.py)."""

from prefopt.interfaces import REFERENCE, STUDENT, Prediction

STUDENT_W = Prediction(STUDENT, "w", "c")  # ε_θ(x_t^w, c)
STUDENT_L = Prediction(STUDENT, "l", "c")  # ε_θ(x_t^l, c)
REF_W = Prediction(REFERENCE, "w", "c")  # ε_ref(x_t^w, c)
REF_L = Prediction(REFERENCE, "l", "c")  # ε_ref(x_t^l, c)
REF_L_NEG = Prediction(REFERENCE, "l", "c-")  # ε_ref(x_t^l, c-): DDSPO's losing target

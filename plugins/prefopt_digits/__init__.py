"""The digit-scenes benchmark: a GenEval-style world, scorer and reference model that fit a laptop CPU."""

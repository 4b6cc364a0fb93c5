"""prefopt's first-party evaluators (registered through the prefopt.plugins entry points)."""

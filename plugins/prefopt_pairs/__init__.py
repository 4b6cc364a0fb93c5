"""prefopt's first-party pairs (registered through the prefopt.plugins entry points)."""

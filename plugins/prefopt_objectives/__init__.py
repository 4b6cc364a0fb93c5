"""prefopt's first-party objectives (registered through the prefopt.plugins entry points)."""

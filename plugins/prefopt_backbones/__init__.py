"""prefopt's first-party backbones (registered through the prefopt.plugins entry points)."""

"""prefopt: preference optimisation for diffusion models.

The core names no objective, backbone or pair source; those arrive as plugins
through the ``prefopt.plugins`` entry-point group. Importing this package must
stay cheap (no torch): the CLI's ``--help`` and ``validate`` rely on it.
"""

__version__ = "0.1.0"

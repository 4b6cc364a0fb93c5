"""User-facing errors: one clear line, exit code 2, no traceback unless --debug."""


class PrefoptError(Exception):
    """A mistake in the user's input or environment, explained in one line."""


class RecipeError(PrefoptError):
    """A recipe file or override that cannot be turned into a valid recipe."""


class PluginError(PrefoptError):
    """A plugin that cannot be loaded, or two plugins that claim one name."""


class DataError(PrefoptError):
    """A pair dataset that is missing, corrupt, or made for another backbone."""


class MissingDependencyError(PrefoptError):
    """An optional dependency that the recipe needs is not installed."""

    def __init__(self, module: str, extra: str):
        super().__init__(
            f"this recipe needs the optional package {module!r}: "
            f"pip install 'prefopt[{extra}]'"
        )


def require(module: str, extra: str):
    """Import an optional dependency or fail naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module, extra) from exc

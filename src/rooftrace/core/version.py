"""The version of rooftrace (one place; ``rooftrace.__version__`` and pyproject.toml read it)."""

__version__ = "0.2.0"

"""chronik's version, in a module of its own so that any layer may read it without importing
the package (``chronik/__init__.py`` re-exports nearly everything)."""

__all__ = ["__version__"]

__version__ = "0.1.0"

"""Gateway kernel and entry point."""

__version__ = "0.1.0"

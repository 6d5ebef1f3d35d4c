"""The ``oncomri`` command: thin argument parsing over the library layers."""

from .main import main

__all__ = ["main"]

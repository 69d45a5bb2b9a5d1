"""The one exception type for bad user input (defined with the engine, which the method builds
on): the CLI prints its message and exits 2."""

from engine.errors import UserError

__all__ = ["UserError"]

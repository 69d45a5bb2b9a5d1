"""The one exception type for bad user input: the CLI prints its message and exits 2."""


class UserError(ValueError):
    """Bad input from the user (config, dataset spec, paths, flags); the message names the value."""

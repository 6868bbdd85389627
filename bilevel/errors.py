"""The library's one root exception type."""


class BilevelError(ValueError):
    """Raised for invalid input to the library: the message names the argument,
    the value received and what was expected."""

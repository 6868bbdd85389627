"""The library's one root exception type."""


class BilevelError(ValueError):
    """Raised for invalid input to the library: the message names the argument,
    the value received and what was expected."""


class DivergenceError(BilevelError):
    """A run produced a NaN or Inf: `step` is the outer step, `quantity` what was not finite;
    `note` says what was kept (e.g. the last good checkpoint)."""

    def __init__(self, step: int, quantity: str, note: str = ""):
        super().__init__(f"diverged at step {step}: {quantity} is not finite{note}")
        self.step, self.quantity = step, quantity

"""The exceptions a sweep raises for its users (one module, so that no module imports another for them)."""


class UserError(ValueError):
  """Bad input from the user: the message is one line saying what is wrong and how to fix it."""


class SweepStopped(RuntimeError):
  """Training stopped early (--nan_policy=stop); results.json says which model and when."""

"""The exceptions a sweep raises for its users (one module, so that no module imports another for
them)."""


class UserError(ValueError):
  """Bad input from the user: the message is one line saying what is wrong and how to fix it."""


class SweepStopped(RuntimeError):
  """Training stopped early (--nan_policy=stop); results.json says which model and when."""


class Preempted(RuntimeError):
  """SIGTERM or SIGINT arrived: the sweep saved a checkpoint at `step` and stopped."""

  def __init__(self, step: int, signum: int):
    super().__init__(f"preempted at step {step}; rerun the same command to resume")
    self.step, self.signum = step, signum


class WriteError(OSError):
  """A file or checkpoint could not be written; the previous one is intact."""

  def __init__(self, path: str, error: BaseException):
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    reason = getattr(error, "strerror", None) or text
    super().__init__(
      f"cannot write {path}: {reason}; the previous file is intact: fix the "
      "cause and rerun the same command to resume"
    )
    self.path = path

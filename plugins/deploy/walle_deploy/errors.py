"""Deploy errors. They derive from :class:`walle_core.errors.WalleError` so the ``walle`` CLI
prints them as one line instead of a traceback."""

from walle_core.errors import WalleError


class DeployError(WalleError):
    """Base class of every failure the deploy plugin reports."""


class TaskError(DeployError):
    """A task directory is not a valid task (task.toml missing or incomplete)."""


class BundleError(DeployError):
    """A bundle is malformed, tampered with, truncated or unsigned; it must not be installed."""


class PolicyError(DeployError):
    """A target expression or stage list cannot be parsed."""

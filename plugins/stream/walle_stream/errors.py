"""The stream plugin's user-facing error: bad trigger, feature or task definitions.

It derives from the core's :class:`~walle_core.errors.WalleError`, so the ``walle`` CLI
prints it as a one-line message instead of a traceback."""

from walle_core.errors import WalleError


class StreamConfigError(WalleError):
    """A trigger, feature or task definition is invalid; the message names the field."""

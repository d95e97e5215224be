"""Exception types. Every failure a user can cause surfaces as one of these, with a
message that names the model element at fault (op type, node name, field)."""


class WalleError(Exception):
    """Base class for errors Walle reports to users."""


class ModelError(WalleError):
    """The model file is malformed or inconsistent."""


class UnsupportedOpError(WalleError):
    """An op (or an attribute / dtype combination of it) has no decomposition."""


class BackendError(WalleError):
    """A backend failed to compile or run a segment."""

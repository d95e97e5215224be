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


class RunCancelled(WalleError):
    """A run was stopped through its ``CancelToken`` before it finished; its outputs are lost."""


class InputValueRequired(UnsupportedOpError):
    """Lowering needs the run-time value of graph input ``input_name`` (e.g. a shape fed as an
    input). Raised when planning from shapes alone; a run with the actual arrays succeeds."""

    def __init__(self, message: str, input_name: str) -> None:
        super().__init__(message)
        self.input_name = input_name

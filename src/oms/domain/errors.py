"""Domain errors. Each names the contract's status code; the API layer maps them in one place."""

from __future__ import annotations


class OmsError(Exception):
    """Base class: a request the OMS refuses, with a message for the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(OmsError):
    """A malformed or out-of-range field; `field` names it (dotted path as in the request)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class NotFound(OmsError):
    pass


class AlreadyExists(OmsError):
    pass


class FailedPrecondition(OmsError):
    pass


class OutOfRange(OmsError):
    pass


class ResumeOutOfRange(OutOfRange):
    """A stream's resume point outside the retained history. `reason` and `metadata` (the
    sequence it may resume from, or the newest) go into a google.rpc.ErrorInfo, so that a
    program need not read them out of the message."""

    def __init__(self, message: str, reason: str, **metadata: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = {name: str(value) for name, value in metadata.items()}


HISTORY_TRIMMED = "HISTORY_TRIMMED"
"""ResumeOutOfRange reason: events after the resume point left the retained history;
metadata `oldest_sequence`."""
SEQUENCE_AHEAD = "SEQUENCE_AHEAD"
"""ResumeOutOfRange reason: a resume point beyond the newest sequence; metadata
`newest_sequence`."""


class ResourceExhausted(OmsError):
    pass


class StreamLimit(ResourceExhausted):
    """As many streams open as allowed: opening again meets the same refusal until one of
    them closes (unlike a stream cut off for falling behind, which resumes at once)."""


class Unavailable(OmsError):
    pass


class ConcurrentModification(OmsError):
    """An optimistic version check failed; the engine re-reads and retries."""

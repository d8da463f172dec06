"""The one root every tiepdan error derives from, and the kinds of fault callers act on.

A caller decides what to do by the kind (bad input is answered and dropped, unavailable is
retried later), never by the module that raised it; HTTP statuses and MQTT error codes are
derived from the kind in one place each (`controller/http/errors.py`,
`firmware/agent/commands.py`). `code` is the machine-readable reason sent on the wire; `extra`
carries details that go along with it (for instance the offset an upload may resume from).
"""

from __future__ import annotations

from typing import Any


class TiepdanError(Exception):
    """Root of every error tiepdan raises on purpose."""

    code = "error"

    def __init__(self, message: str = "", *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.extra = extra

    @property
    def message(self) -> str:
        return str(self)


class BadInput(TiepdanError, ValueError):
    """The input is malformed or breaks a rule; sending it again will not help."""

    code = "bad_request"


class TooLarge(BadInput):
    """The input is larger than the contract allows."""

    code = "too_large"


class OutOfRange(BadInput):
    """A position or offset outside what exists (a resumed upload's offset, say)."""

    code = "bad_offset"


class Corrupt(BadInput):
    """The bytes do not match what was declared for them (hash, size, signature)."""

    code = "corrupt"


class NotFound(TiepdanError, LookupError):
    """The thing named does not exist (here, or yet)."""

    code = "not_found"


class Conflict(TiepdanError):
    """The request contradicts the current state (a fork, a duplicate, a busy lock)."""

    code = "conflict"


class Unauthorized(TiepdanError):
    """The caller has not proved who it is."""

    code = "unauthorized"


class Forbidden(TiepdanError):
    """The caller is known but may not do this."""

    code = "forbidden"


class Unavailable(TiepdanError):
    """A part this needs is not there now (broker, network, disk, a peer); try again later."""

    code = "unavailable"


class TimedOut(Unavailable):
    """The peer stopped sending before it finished (a stalled upload); it may try again."""

    code = "timeout"

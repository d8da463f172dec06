"""The error root: every refusal the project raises on purpose is a TiepdanError.

Each subclass names a kind of refusal with a stable `code`; the HTTP layer maps the kinds to
statuses in one place (`controller.http.access`), CLIs and logs use the code.
"""

from __future__ import annotations


class TiepdanError(Exception):
    """Refused on purpose, with a reason meant for the caller."""

    code: str = "error"


class BadInput(TiepdanError):
    code = "bad_request"


class NotFound(TiepdanError):
    code = "not_found"


class Conflict(TiepdanError):
    code = "conflict"


class Unauthorized(TiepdanError):
    """The caller did not say who they are (or said it wrongly)."""

    code = "unauthorized"


class Forbidden(TiepdanError):
    """The caller is known but may not do this."""

    code = "forbidden"


class Unavailable(TiepdanError):
    code = "unavailable"

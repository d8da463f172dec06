"""Who may call a route: every handler declares it with `@allow(...)`.

`who` names roles (admin, operator, technician, archivist, leader), "box" for a box's TLS client
certificate, or "public" for anyone. The HTTP app's auth middleware reads the mark.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])

ATTRIBUTE = "__tiepdan_access__"


def allow(*who: str) -> Callable[[F], F]:
    def mark(handler: F) -> F:
        setattr(handler, ATTRIBUTE, frozenset(who))
        return handler
    return mark


def allowed(handler: object) -> frozenset[str] | None:
    """The mark on `handler`, or None if it declares nothing."""
    found = getattr(handler, ATTRIBUTE, None)
    return found if isinstance(found, frozenset) else None

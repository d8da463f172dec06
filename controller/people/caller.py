"""Who is making a request: a signed-in person, a person's API token, or the legacy admin token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tiepdan.controller.people.roles import may

Via = Literal["cookie", "token", "admin-token"]


@dataclass(frozen=True)
class Caller:
    user: str
    role: str
    province: str  # an operator's province; empty: every province
    via: Via
    csrf: str = ""  # the login session's CSRF token (cookie callers only)

    def may(self, action: str) -> bool:
        return may(self.role, action)

    def sees_province(self, province: str) -> bool:
        """An operator sees their own province's boxes and sessions only."""
        return self.role != "operator" or province == self.province

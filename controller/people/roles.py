"""Who may do what: the five roles of the console and the API, and what each may do.

Checks name an action ("fleet.command", "archive.export") rather than a role, so a page or a
route says what it does and this one table says who may.
"""

from __future__ import annotations

from typing import Final, Literal

Role = Literal["admin", "operator", "technician", "archivist", "leader"]
ROLES: Final[tuple[Role, ...]] = ("admin", "operator", "technician", "archivist", "leader")

# action -> roles allowed; admin may do everything.
ACTIONS: Final[dict[str, frozenset[str]]] = {
    "fleet.view": frozenset({"operator", "technician", "leader"}),
    "fleet.command": frozenset({"operator", "technician"}),
    "sessions.view": frozenset({"operator", "leader"}),
    "sessions.manage": frozenset({"operator", "leader"}),
    "sessions.join": frozenset({"leader", "operator"}),
    "updates.view": frozenset({"technician"}),
    "updates.manage": frozenset(),
    "archive.view": frozenset({"archivist", "technician"}),
    "archive.verify": frozenset({"archivist", "technician"}),
    "archive.export": frozenset({"archivist"}),
    "provisioning.view": frozenset({"technician"}),
    "provisioning.manage": frozenset({"technician"}),
    "people.manage": frozenset(),
    "audit.view": frozenset(),
}


def may(role: str, action: str) -> bool:
    """Whether `role` may perform `action`; unknown actions are refused."""
    if action not in ACTIONS:
        return False
    return role == "admin" or role in ACTIONS[action]


def check_role(value: str) -> Role:
    """The role named by `value`, or ValueError naming the valid ones."""
    for role in ROLES:
        if value == role:
            return role
    raise ValueError(f"unknown role {value!r}; one of {', '.join(ROLES)}")

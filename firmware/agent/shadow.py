"""Desired and reported configuration, AWS-IoT-shadow style.

The controller keeps a retained, versioned *desired* document per box; the box applies a newer
version, remembers it on disk (so an offline reboot still runs it) and answers with a retained
*reported* document naming the version it processed. An invalid document is reported back with
its error and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from tiepdan.firmware import protocol
from tiepdan.firmware.agent.store import BoxStore

log = logging.getLogger(__name__)

Listener = Callable[[protocol.RemoteConfig], None]


class Shadow:
    def __init__(self, store: BoxStore) -> None:
        self._store = store
        self._listeners: list[Listener] = []
        saved = store.get("desired")
        self.version = 0
        self.config = protocol.RemoteConfig()
        self.error: str | None = None
        if saved is not None:
            try:
                desired = msgspec.convert(saved, protocol.Desired)
                self.version, self.config = desired.version, desired.config
            except msgspec.ValidationError as exc:
                log.error("shadow_saved_invalid error=%s", exc)

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)
        listener(self.config)

    def apply(self, payload: bytes) -> protocol.Reported | None:
        """Apply a desired document; returns what to report, or None when nothing changes."""
        if not payload:
            return None  # the controller cleared the retained document
        try:
            desired = protocol.decode(payload, protocol.Desired)
        except protocol.ProtocolError as exc:
            log.error("shadow_desired_invalid error=%s", exc)
            version = _version_of(payload)
            if version is None or version <= self.version:
                return None
            self.version, self.error = version, str(exc)
            return self.reported()
        if desired.version <= self.version:
            log.info("shadow_desired_stale version=%d applied=%d", desired.version, self.version)
            return None
        self.version, self.config, self.error = desired.version, desired.config, None
        self._store.put("desired", protocol.to_builtins(desired))
        log.info("shadow_applied version=%d", desired.version)
        for listener in self._listeners:
            listener(self.config)
        return self.reported()

    def reported(self) -> protocol.Reported:
        return protocol.Reported(
            version=self.version, ts=protocol.now_ms(), config=self.config, error=self.error
        )


def _version_of(payload: bytes) -> int | None:
    """The version of an otherwise invalid document, so the refusal can name it."""

    class _Versioned(msgspec.Struct):
        version: int

    try:
        version = msgspec.json.decode(payload, type=_Versioned).version
    except msgspec.DecodeError:
        return None
    return version if version > 0 else None

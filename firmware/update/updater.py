"""What owns the code slots: TUF fetch and verification, install into the spare slot, the A/B
switch, commit, rollback, and the launcher's boot accounting.

On a box this runs in its own process (`tiepdan-updater`, `daemon.py`), the only one that may
write /opt/tiepdan; the agent asks it over the local channel and relays its progress. Tests and
simulated fleets may run it inside the agent (`ota.updater_socket = ""`): same code, one process.

Every trust decision comes from python-tuf's ngclient: signatures and thresholds, expiry,
version rollback, freeze and mix-and-match of metadata, and the bundle's length and hash. This
module only adds the policy TUF leaves to applications: a signed version must not be older
than the running one unless the targets metadata marks it as an admin-signed downgrade. What
the caller says is a name to look up in the signed metadata, never a file or a hash to trust.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.version import InvalidVersion, Version
from tuf.api import exceptions as tuf_errors

from tiepdan.firmware.core.backoff import Backoff
from tiepdan.firmware.update import boot, slots
from tiepdan.firmware.update.channel import Fetch, Install, Refused

if TYPE_CHECKING:
    from tuf.api.metadata import TargetFile
    from tuf.ngclient import Updater as TufClient

    from tiepdan.firmware.agent.config import AgentConfig
    from tiepdan.firmware.update.fetcher import ResumableFetcher

log = logging.getLogger(__name__)

Progress = Callable[[float], None]


class Stopping(Exception):
    """The download was stopped (the caller went away or the process stops); partial kept."""


@dataclass(frozen=True)
class Verified:
    """A bundle that passed TUF's checks in this process, and what the metadata says of it."""

    path: Path
    info: TargetFile
    version: str


class Updater:
    def __init__(self, config: AgentConfig, work: Path) -> None:
        self.agent_config = config
        self.config = config.ota
        self.device = config.device.id
        self.root = Path(self.config.root)
        self.work = work
        self._fetchers: set[ResumableFetcher] = set()
        self._verified: dict[str, Verified] = {}
        self._installed: tuple[str, str] | None = None  # (slot, target)
        self._guard: asyncio.TimerHandle | None = None
        self._guarding: set[asyncio.Task[None]] = set()

    def running_version(self) -> str | None:
        slot = boot.current_slot(self.root)
        return boot.slot_version(self.root, slot) if slot else None

    def stop(self) -> None:
        """Stop any download at its next chunk (its partial file is kept for the next try)."""
        for fetcher in self._fetchers:
            fetcher.stop.set()

    async def recover(self) -> None:
        await asyncio.to_thread(slots.recover, self.root)

    # -- fetch -----------------------------------------------------------------------------------

    async def fetch(self, request: Fetch, progress: Progress) -> dict[str, str]:
        """Refresh metadata, check policy, download and verify; bounded retries."""
        attempts = self.config.download_attempts
        backoff = Backoff(self.config.retry_delay, float("inf"))
        for attempt in range(1, attempts + 1):
            try:
                found = await self._fetch_once(request, progress)
            except tuf_errors.RepositoryError as exc:
                error = f"verification failed: {type(exc).__name__}: {exc}"
            except tuf_errors.DownloadHTTPError as exc:
                error = f"download failed: HTTP {exc.status_code}"
            except tuf_errors.DownloadError as exc:
                if getattr(exc, "stopping", False):  # fetcher.Stopped
                    raise Stopping() from None
                error = f"download failed: {type(exc).__name__}: {exc}"
            except OSError as exc:
                raise Refused("failed", f"cannot store the download: {exc}") from None
            else:
                self._verified[request.target] = found
                return {"target": request.target, "version": found.version}
            log.warning("ota_fetch_failed device=%s job=%s attempt=%d/%d error=%s",
                        self.device, request.job, attempt, attempts, error)
            if attempt == attempts:
                raise Refused("failed", f"{error} (after {attempts} attempts)")
            await asyncio.sleep(backoff.next())
        raise AssertionError("unreachable")

    async def _fetch_once(self, request: Fetch, progress: Progress) -> Verified:
        trusted = Path(self.config.trusted_root)
        try:
            bootstrap = await asyncio.to_thread(trusted.read_bytes)
        except OSError as exc:
            raise Refused("rejected",
                          f"no trusted root metadata at {trusted}: {exc.strerror}") from None
        from tuf.ngclient import Updater as TufClient

        from tiepdan.firmware.update.fetcher import ResumableFetcher

        base = (self.config.repository or request.repository).rstrip("/")
        if not base:
            raise Refused("rejected", "no repository configured or named by the job")
        loop = asyncio.get_running_loop()
        received = [0, 1]

        def on_bytes(count: int) -> None:
            received[0] += count
            loop.call_soon_threadsafe(progress, min(100.0, 100.0 * received[0]
                                                    / max(received[1], 1)))

        from tiepdan.firmware.core.mqtt import LinkError, client_context

        tls = None
        if base.startswith("https://"):  # the controller's box listener: mutual TLS
            try:
                tls = await asyncio.to_thread(client_context, self.agent_config.box_tls())
            except LinkError as exc:
                raise Refused("failed", f"no TLS identity: {exc}") from None
        fetcher = ResumableFetcher(self.work / "partial", targets_prefix=f"{base}/targets/",
                                   timeout=self.config.http_timeout, on_bytes=on_bytes,
                                   tls=tls)
        for folder in ("metadata", "bundles"):
            (self.work / folder).mkdir(parents=True, exist_ok=True)
        client = TufClient(str(self.work / "metadata"), f"{base}/metadata/",
                           str(self.work / "bundles"), f"{base}/targets/", fetcher=fetcher,
                           bootstrap=bootstrap)

        def resolve() -> TargetFile | None:
            client.refresh()
            return client.get_targetinfo(request.target)

        self._fetchers.add(fetcher)
        try:
            target = await self._in_thread(fetcher, resolve)
            if target is None:
                raise Refused("rejected",
                              f"{request.target} is not in the signed targets metadata")
            version = self._check_policy(request, target)
            cached = client.find_cached_target(target)
            if cached is not None:
                return Verified(Path(cached), target, version)
            received[1] = target.length
            try:
                path = await self._in_thread(fetcher, lambda: _download(client, fetcher,
                                                                        target))
            except tuf_errors.RepositoryError:
                # Wrong length or hash: what we have is worthless, start the next try from zero.
                fetcher.discard(fetcher.last_target_url)
                raise
            return Verified(Path(path), target, version)
        finally:
            self._fetchers.discard(fetcher)

    @staticmethod
    async def _in_thread(fetcher: ResumableFetcher, work: Callable[[], Any]) -> Any:
        try:
            return await asyncio.to_thread(work)
        except asyncio.CancelledError:
            fetcher.stop.set()  # the thread stops at its next chunk
            raise

    def _check_policy(self, request: Fetch, target: TargetFile) -> str:
        custom = target.custom if isinstance(target.custom, dict) else {}
        signed = custom.get("version")
        running_text = self.running_version()
        try:
            wanted = Version(str(signed))
        except InvalidVersion:
            raise Refused("rejected", f"{request.target} carries no valid signed version "
                                      f"({signed!r})") from None
        if not _valid(request.version) or Version(request.version) != wanted:
            raise Refused("rejected", f"job names {request.version}, the signed metadata "
                                      f"says {signed}")
        if running_text is None or not _valid(running_text):
            raise Refused("rejected", f"no committed slot with a version under {self.root}")
        running = Version(running_text)
        if wanted == running:
            raise Refused("succeeded", f"already running {running}")
        if wanted < running and custom.get("downgrade") is not True:
            raise Refused("rejected", f"{signed} is older than the running {running} and no "
                                      "downgrade was signed")
        return str(signed)

    # -- install and switch ----------------------------------------------------------------------

    async def install(self, request: Install) -> str:
        """Install a bundle this process verified; returns the slot it went into."""
        target = request.target
        if target not in self._verified and request.job and request.version:
            # Fetched before this process started: from the cache, verified again.
            await self.fetch(Fetch(job=request.job, target=target, version=request.version,
                                   repository=request.repository), lambda _: None)
        verified = self._verified.get(target)
        if verified is None:
            raise Refused("failed", f"{target} was not fetched and verified by the updater; "
                                    "fetch it first")
        try:
            await asyncio.to_thread(_check_again, verified)
            installed = await asyncio.to_thread(slots.install, self.root, verified.path)
        except (slots.InstallError, OSError, ValueError) as exc:
            raise Refused("failed", f"install failed: {exc}") from None
        if installed.version != verified.version:
            raise Refused("failed", f"install failed: the bundle holds {installed.version}, "
                                    f"the signed metadata says {verified.version}")
        self._installed = (installed.name, target)
        return installed.name

    async def switch(self, slot: str, target: str, job: str | None) -> None:
        verified = self._verified.get(target)
        if verified is None or self._installed != (slot, target):
            raise Refused("failed", f"switch failed: slot {slot} does not hold {target} as "
                                    "installed by the updater")
        try:
            await asyncio.to_thread(boot.switch, self.root, slot, version=verified.version,
                                    job=job, attempts=self.config.boot_attempts,
                                    health_timeout=self.config.health_timeout)
        except (RuntimeError, OSError) as exc:
            raise Refused("failed", f"switch failed: {exc}") from None
        self._installed = None
        log.info("ota_switched device=%s slot=%s version=%s", self.device, slot,
                 verified.version)

    # -- the trial -------------------------------------------------------------------------------

    async def commit(self, slot: str) -> bool:
        done = await asyncio.to_thread(boot.commit, self.root, slot)
        if done:
            self._disarm()
            log.info("ota_committed device=%s slot=%s version=%s", self.device, slot,
                     boot.slot_version(self.root, slot))
        return done

    async def rollback(self, slot: str, reason: str) -> bool:
        done = await asyncio.to_thread(boot.rollback, self.root, slot, reason)
        if done:
            self._disarm()
        return done

    async def mark_reported(self) -> None:
        await asyncio.to_thread(boot.mark_reported, self.root)

    async def started(self, slot: str, pid: int) -> dict[str, bool]:
        """The launcher's boot accounting, for a launcher that may not write the boot state:
        counts an attempt of a trial slot, and guards the agent `pid` with the health deadline
        (rollback, then SIGTERM) as the launcher's own guardian would."""
        run_current, guard = await asyncio.to_thread(boot.begin, self.root, slot)
        if guard is not None:
            self._disarm()
            self._arm(slot, guard, pid)
        return {"run_current": run_current}

    def _arm(self, slot: str, timeout: float, pid: int | None) -> None:
        def fire() -> None:
            task = asyncio.get_running_loop().create_task(self._guard_fired(slot, timeout, pid))
            self._guarding.add(task)
            task.add_done_callback(self._guarding.discard)

        self._guard = asyncio.get_running_loop().call_later(timeout, fire)

    def guard_pending_trial(self) -> None:
        """At the updater's start: a trial whose launcher could not reach it still gets its
        health deadline (and is rolled back unless the agent commits or starts again)."""
        trial = boot.read_state(self.root)["trial"]
        if trial is not None:
            self._arm(str(trial["slot"]), float(trial["health_timeout"]), None)

    def _disarm(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None

    async def _guard_fired(self, slot: str, timeout: float, pid: int | None) -> None:
        self._guard = None
        if pid is not None and not boot.alive(pid):
            return  # the agent is gone; its next start counts an attempt and guards again
        if await asyncio.to_thread(boot.rollback, self.root, slot,
                                   f"no health verdict within {timeout:g} s of starting"):
            log.error("ota_guard_rollback device=%s slot=%s pid=%s", self.device, slot, pid)
            if pid is None:
                return
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError as exc:
                log.error("ota_guard_kill_failed pid=%d error=%s", pid, exc)


def _download(client: TufClient, fetcher: ResumableFetcher, target: TargetFile) -> str:
    try:
        path = client.download_target(target)
    except tuf_errors.DownloadLengthMismatchError:
        fetcher.discard(fetcher.last_target_url)  # an oversized file is worthless
        raise
    fetcher.discard(fetcher.last_target_url)
    return path


def _check_again(verified: Verified) -> None:
    """The bundle may have waited hours for the maintenance window: check it once more."""
    with verified.path.open("rb") as handle:
        try:
            verified.info.verify_length_and_hashes(handle)
        except tuf_errors.LengthOrHashMismatchError as exc:
            raise slots.InstallError(f"the verified bundle changed on disk: {exc}") from None


def _valid(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True

"""The box's update feature: jobs over MQTT, TUF fetch, A/B install, health check, report.

One job at a time, from the retained `jobs/notify`:

    queued (waiting: clock sync) -> in_progress downloading -> downloaded (download ahead)
    -> waits for the maintenance window and for no hold (a live session) -> installing
    -> restarting (switch to the new slot, exit 75) -> health_check in the new version
    -> succeeded (committed) | rolled_back (reported by the old version after the switch back)
    failed: could not fetch, verify or install; the box never left its version
    rejected: the signed metadata does not allow it (unknown target, unsigned downgrade)

Every trust decision comes from python-tuf's ngclient: signatures and thresholds, expiry,
version rollback, freeze and mix-and-match of metadata, and the bundle's length and hash. This
module only adds the policy TUF leaves to applications: a signed version must not be older
than the running one unless the targets metadata marks it as an admin-signed downgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.version import InvalidVersion, Version
from tuf.api import exceptions as tuf_errors

import tiepdan
from tiepdan.board.sensors import clock_synced
from tiepdan.errors import Conflict
from tiepdan.firmware import protocol
from tiepdan.firmware.core.backoff import Backoff
from tiepdan.firmware.core.mqtt import Inbound
from tiepdan.firmware.update import boot, slots, window

if TYPE_CHECKING:
    from tuf.api.metadata import TargetFile
    from tuf.ngclient import Updater

    from tiepdan.firmware.agent.agent import Agent
    from tiepdan.firmware.update.fetcher import ResumableFetcher

# The TUF client, the fetcher and the self-test (camera, audio: numpy, PyAV) load only when an
# update runs: a box's agent starts in a third of the time without them.

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 5.0
PROGRESS_STEP = 5.0
DONE_KEPT = 20
POLL = 1.0


class JobEnded(Conflict):
    """The job reached a final status (already reported) or was withdrawn."""


def running_slot(root: Path) -> slots.Slot | None:
    """The slot this code was loaded from, when it runs from one under `root`."""
    here = Path(tiepdan.__file__).resolve()
    # <root>/slots/<x>/site/tiepdan/__init__.py
    slot_dir = here.parents[2] if len(here.parents) > 2 else None
    if slot_dir is not None and slot_dir.parent == (root / "slots").resolve() \
            and slot_dir.name in boot.SLOTS:
        return slots.Slot(root, slot_dir.name)
    return None


class OtaClient:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.config = agent.config.ota
        self.root = Path(self.config.root)
        self.work = agent.config.state_dir / "ota"
        self.slot = running_slot(self.root)
        self.version = tiepdan.__version__
        self._notified: protocol.JobDocument | None = None
        self._wake = asyncio.Event()
        self._fetcher: ResumableFetcher | None = None
        self._last_progress = (0.0, -100.0)
        self._step: str = "idle"
        self._waiting_for = ""

    def assume_slot(self, slot: slots.Slot) -> None:
        """For hosts that run many boxes' agents in one process (benchmarks, campaign tests):
        act as if this code had been loaded from `slot`."""
        self.slot = slot
        self.version = slot.version or self.version

    # -- inbound ---------------------------------------------------------------------------------

    def on_jobs(self, topic: protocol.Topic, message: Inbound) -> None:
        if topic.rest != ("notify",):
            raise protocol.ProtocolError(f"unexpected jobs topic {message.topic[:120]}")
        notify = protocol.decode(message.payload, protocol.JobNotify) if message.payload \
            else protocol.JobNotify(ts=protocol.now_ms())
        if notify.job != self._notified:
            log.info("ota_notified device=%s job=%s target=%s", self.agent.device,
                     notify.job.job if notify.job else None,
                     notify.job.target if notify.job else None)
        self._notified = notify.job
        self._wake.set()

    @property
    def step(self) -> str:
        """Where the current job is (idle, queued, downloading, ..., installing, restarting)."""
        return self._step

    def status(self) -> dict[str, Any]:
        state = boot.read_state(self.root) if self.slot else {}
        return {"slot": self.slot.name if self.slot else None, "version": self.version,
                "step": self._step, "waiting_for": self._waiting_for or None,
                "job": self._notified.job if self._notified else None,
                "trial": state.get("trial"), "clock_synced": self._clock_ok()}

    # -- main loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        if self.slot is not None:
            await asyncio.to_thread(slots.recover, self.root)
            state = boot.read_state(self.root)
            trial = state["trial"]
            if trial is not None and trial["slot"] == self.slot.name:
                await self._health_check(trial)
            await self._report_outcome()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                job = self._notified
                if job is None:
                    continue
                with contextlib.suppress(JobEnded):
                    await self._process(job)
                self._step = "idle"
                self._waiting_for = ""
        finally:
            if self._fetcher is not None:
                self._fetcher.stop.set()

    # -- reporting -------------------------------------------------------------------------------

    def _report(self, job: str, status: protocol.JobStatus, *, step: protocol.JobStep | None = None,
                progress: float | None = None, reason: str | None = None) -> asyncio.Future[None]:
        seq = int(self.agent.store.get("ota_seq", 0)) + 1
        update = protocol.JobUpdate(job=job, status=status, ts=protocol.now_ms(), seq=seq,
                                    running=self.version, step=step, progress=progress,
                                    reason=reason[:500] if reason else None)
        self.agent.store.put("ota_seq", seq)
        if status in protocol.TERMINAL_JOB_STATUSES:
            done = dict(self.agent.store.get("ota_done", {}))
            done[job] = protocol.to_builtins(update)
            if len(done) > DONE_KEPT:
                for old in sorted(done, key=lambda k: done[k]["ts"])[:len(done) - DONE_KEPT]:
                    del done[old]
            self.agent.store.put("ota_done", done)
            log.info("ota_job_done device=%s job=%s status=%s reason=%s", self.agent.device,
                     job, status, reason)
        return self.agent.link.publish(protocol.job_update_topic(self.agent.device, job),
                                       protocol.encode(update), qos=1)

    def _finish(self, job: str, status: protocol.JobStatus, reason: str) -> JobEnded:
        self._report(job, status, reason=reason)
        return JobEnded(status)

    def _progress(self, job: str, percent: float) -> None:
        """Download progress, throttled to every 5 s or every 5 %."""
        last_at, last_pct = self._last_progress
        now = time.monotonic()
        if percent >= 100 or now - last_at >= PROGRESS_SECONDS \
                or percent - last_pct >= PROGRESS_STEP:
            self._last_progress = (now, percent)
            self._report(job, "in_progress", step="downloading", progress=round(percent, 1))

    async def _report_outcome(self) -> None:
        """Report how the last trial ended, once, from whichever version runs now."""
        outcome = boot.read_state(self.root)["outcome"]
        if not outcome or outcome.get("reported") or not outcome.get("job"):
            return
        job, result, reason = outcome["job"], outcome["result"], outcome["reason"]
        if result == "interrupted":
            # The switch never happened: the job is still pending and simply runs again.
            log.warning("ota_switch_interrupted device=%s job=%s", self.agent.device, job)
        else:
            log.info("ota_trial_outcome device=%s job=%s result=%s reason=%s",
                     self.agent.device, job, result, reason)
            done = self._report(job, "succeeded" if result == "succeeded" else "rolled_back",
                                reason=f"{outcome['version']}: {reason}")
            with contextlib.suppress(Exception):
                await done
        await asyncio.to_thread(boot.mark_reported, self.root)

    # -- health check (runs in the new version) --------------------------------------------------

    async def _health_check(self, trial: dict[str, Any]) -> None:
        assert self.slot is not None
        self._step = "health_check"
        job = trial.get("job")
        if job:
            self._report(job, "in_progress", step="health_check")
        # Leave the guardian (which forces a rollback at the full timeout) time to stay idle.
        timeout = float(trial["health_timeout"]) * 0.8
        from tiepdan.firmware.update import health

        problem = await health.check(self.agent, timeout)
        if problem is None:
            if await asyncio.to_thread(boot.commit, self.root, self.slot.name):
                log.info("ota_committed device=%s slot=%s version=%s", self.agent.device,
                         self.slot.name, self.version)
            return
        log.error("ota_health_failed device=%s slot=%s reason=%s", self.agent.device,
                  self.slot.name, problem)
        if await asyncio.to_thread(boot.rollback, self.root, self.slot.name, problem):
            self.agent.request_stop(restart=True)
            await asyncio.Event().wait()  # the agent is stopping; the old version reports

    # -- one job ---------------------------------------------------------------------------------

    def _still(self, job: protocol.JobDocument) -> None:
        """Raise when the controller withdrew or replaced the job."""
        if self._notified is None or self._notified.job != job.job:
            log.info("ota_job_withdrawn device=%s job=%s", self.agent.device, job.job)
            raise JobEnded("withdrawn")

    async def _wait(self, job: protocol.JobDocument, ready: Any, what: str,
                    status: protocol.JobStatus, step: protocol.JobStep) -> None:
        """Wait until `ready()`; report once what is being waited for."""
        if ready():
            return
        self._waiting_for = what
        self._report(job.job, status, step=step, reason=f"waiting: {what}")
        while not ready():
            self._still(job)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL):
                    await self._wake.wait()
        self._waiting_for = ""

    def _clock_ok(self) -> bool:
        return self.config.clock == "trust" or clock_synced(Path(self.config.clock_root)) is True

    def _may_install(self, job: protocol.JobDocument) -> bool:
        own = self.agent.shadow.config.maintenance_window
        return window.inside(own or job.window) and not self.agent.holds

    async def _process(self, job: protocol.JobDocument) -> None:
        done = self.agent.store.get("ota_done", {}).get(job.job)
        if done is not None:
            # Seen before: say again how it ended (the first report may have been lost).
            self.agent.link.publish(protocol.job_update_topic(self.agent.device, job.job),
                                    protocol.encode(protocol.convert(done, protocol.JobUpdate)))
            return
        if self.slot is None:
            raise self._finish(job.job, "rejected", f"not running from an A/B slot under "
                                                    f"{self.root}; install an image first")
        self._step = "queued"
        self._report(job.job, "queued", step="waiting")
        if job.download_delay_s:
            # Randomised by the controller so a fleet does not hit the server at once.
            deadline = time.monotonic() + job.download_delay_s
            await self._wait(job, lambda: time.monotonic() >= deadline, "download slot",
                             "queued", "waiting")
        await self._wait(job, self._clock_ok, "clock synchronisation", "queued", "waiting")
        self._still(job)
        self._step = "downloading"
        bundle, target = await self._fetch(job)
        self._report(job.job, "in_progress", step="downloaded", progress=100.0)
        self._step = "downloaded"
        await self._wait(job, lambda: self._may_install(job),
                         "maintenance window and no live session", "in_progress", "downloaded")
        self._still(job)
        self._step = "installing"
        self._report(job.job, "in_progress", step="installing")
        try:
            installed = await asyncio.to_thread(slots.install, self.root, bundle)
        except (slots.InstallError, OSError, ValueError) as exc:
            raise self._finish(job.job, "failed", f"install failed: {exc}") from None
        if not self._may_install(job):  # a session may have started meanwhile
            await self._wait(job, lambda: self._may_install(job),
                             "maintenance window and no live session", "in_progress",
                             "installing")
        self._step = "restarting"
        try:
            await asyncio.to_thread(boot.switch, self.root, installed.name,
                                    version=str(target.custom["version"]), job=job.job,
                                    attempts=self.config.boot_attempts,
                                    health_timeout=self.config.health_timeout)
        except (RuntimeError, OSError) as exc:
            raise self._finish(job.job, "failed", f"switch failed: {exc}") from None
        sent = self._report(job.job, "in_progress", step="restarting")
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await sent
        log.info("ota_switched device=%s slot=%s version=%s", self.agent.device,
                 installed.name, target.custom["version"])
        self.agent.request_stop(restart=True)
        await asyncio.Event().wait()

    # -- fetching --------------------------------------------------------------------------------

    async def _fetch(self, job: protocol.JobDocument) -> tuple[Path, TargetFile]:
        """Refresh metadata, check policy, download and verify; bounded retries."""
        attempts = self.config.download_attempts
        backoff = Backoff(self.config.retry_delay, float("inf"))
        loop = asyncio.get_running_loop()
        for attempt in range(1, attempts + 1):
            self._still(job)
            try:
                return await self._fetch_once(job, loop)
            except JobEnded:
                raise
            except tuf_errors.RepositoryError as exc:
                error = f"verification failed: {type(exc).__name__}: {exc}"
            except tuf_errors.DownloadHTTPError as exc:
                error = f"download failed: HTTP {exc.status_code}"
            except tuf_errors.DownloadError as exc:
                if getattr(exc, "stopping", False):  # fetcher.Stopped
                    raise JobEnded("stopping") from None
                error = f"download failed: {type(exc).__name__}: {exc}"
            except OSError as exc:
                raise self._finish(job.job, "failed", f"cannot store the download: {exc}") \
                    from None
            log.warning("ota_fetch_failed device=%s job=%s attempt=%d/%d error=%s",
                        self.agent.device, job.job, attempt, attempts, error)
            if attempt == attempts:
                raise self._finish(job.job, "failed", f"{error} (after {attempts} attempts)")
            await asyncio.sleep(backoff.next())
        raise AssertionError("unreachable")

    async def _fetch_once(self, job: protocol.JobDocument,
                          loop: asyncio.AbstractEventLoop) -> tuple[Path, TargetFile]:
        trusted = Path(self.config.trusted_root)
        try:
            bootstrap = await asyncio.to_thread(trusted.read_bytes)
        except OSError as exc:
            raise self._finish(job.job, "rejected",
                               f"no trusted root metadata at {trusted}: {exc.strerror}") from None
        from tuf.ngclient import Updater

        from tiepdan.firmware.update.fetcher import ResumableFetcher

        base = (self.config.repository or job.repository).rstrip("/")
        received = [0, 1]

        def on_bytes(count: int) -> None:
            received[0] += count
            loop.call_soon_threadsafe(self._progress, job.job,
                                      min(100.0, 100.0 * received[0] / max(received[1], 1)))

        from tiepdan.firmware.core.mqtt import LinkError, client_context

        tls = None
        if base.startswith("https://"):  # the controller's box listener: mutual TLS
            try:
                tls = await asyncio.to_thread(client_context, self.agent.config.box_tls())
            except LinkError as exc:
                raise self._finish(job.job, "failed", f"no TLS identity: {exc}") from None
        fetcher = ResumableFetcher(self.work / "partial", targets_prefix=f"{base}/targets/",
                                   timeout=self.config.http_timeout, on_bytes=on_bytes,
                                   tls=tls)
        self._fetcher = fetcher
        for folder in ("metadata", "bundles"):
            (self.work / folder).mkdir(parents=True, exist_ok=True)
        updater = Updater(str(self.work / "metadata"), f"{base}/metadata/",
                          str(self.work / "bundles"), f"{base}/targets/", fetcher=fetcher,
                          bootstrap=bootstrap)

        def resolve() -> TargetFile | None:
            updater.refresh()
            return updater.get_targetinfo(job.target)

        target = await asyncio.to_thread(resolve)
        if target is None:
            raise self._finish(job.job, "rejected",
                               f"{job.target} is not in the signed targets metadata")
        self._check_policy(job, target)
        cached = updater.find_cached_target(target)
        if cached is not None:
            return Path(cached), target
        received[1] = target.length
        self._last_progress = (0.0, -100.0)
        try:
            path = await asyncio.to_thread(self._download, updater, fetcher, target)
        except tuf_errors.RepositoryError:
            # Wrong length or hash: what we have is worthless, start the next try from zero.
            fetcher.discard(fetcher.last_target_url)
            raise
        received[0] = target.length
        return Path(path), target

    @staticmethod
    def _download(updater: Updater, fetcher: ResumableFetcher, target: TargetFile) -> str:
        try:
            path = updater.download_target(target)
        except tuf_errors.DownloadLengthMismatchError:
            fetcher.discard(fetcher.last_target_url)  # an oversized file is worthless
            raise
        fetcher.discard(fetcher.last_target_url)
        return path

    def _check_policy(self, job: protocol.JobDocument, target: TargetFile) -> None:
        custom = target.custom if isinstance(target.custom, dict) else {}
        signed = custom.get("version")
        try:
            wanted, running = Version(str(signed)), Version(self.version)
        except InvalidVersion:
            raise self._finish(job.job, "rejected",
                               f"{job.target} carries no valid signed version ({signed!r})") \
                from None
        if not _valid(job.version) or Version(job.version) != wanted:
            raise self._finish(job.job, "rejected", f"job names {job.version}, the signed "
                                                    f"metadata says {signed}")
        if wanted == running:
            raise self._finish(job.job, "succeeded", f"already running {running}")
        if wanted < running and custom.get("downgrade") is not True:
            raise self._finish(job.job, "rejected", f"{signed} is older than the running "
                                                    f"{running} and no downgrade was signed")


def _valid(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True

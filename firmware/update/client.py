"""The box's update feature: jobs over MQTT, TUF fetch, A/B install, health check, report.

One job at a time, from the retained `jobs/notify`:

    queued (waiting: clock sync) -> in_progress downloading -> downloaded (download ahead)
    -> waits for the maintenance window and for no hold (a live session) -> installing
    -> restarting (switch to the new slot, exit 75) -> health_check in the new version
    -> succeeded (committed) | rolled_back (reported by the old version after the switch back)
    failed: could not fetch, verify or install; the box never left its version
    rejected: the signed metadata does not allow it (unknown target, unsigned downgrade)

The fetch, the verification, the install, the switch and every change of the boot state are
the updater's (`updater.py`): on a box a separate process that owns the slots, asked over its
socket (`remote.py`); the agent keeps the MQTT side, the waiting and the health check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tiepdan
from tiepdan.board.sensors import clock_synced
from tiepdan.errors import Conflict
from tiepdan.firmware import protocol
from tiepdan.firmware.core.mqtt import Inbound
from tiepdan.firmware.update import boot, channel, slots, window
from tiepdan.firmware.update.remote import RemoteUpdater

if TYPE_CHECKING:
    from tiepdan.firmware.agent.agent import Agent
    from tiepdan.firmware.update.updater import Updater

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
        self.updater = self._updater()
        self._last_progress = (0.0, -100.0)
        self._step: str = "idle"
        self._waiting_for = ""

    def _updater(self) -> Updater | RemoteUpdater:
        """`tiepdan-updater` on its socket; the same work in this process where the agent may
        write the slots anyway and no updater listens (development, simulated fleets, and boxes
        installed before the updater existed, until their package brings its unit)."""
        socket = self.config.updater_socket
        if socket and (Path(socket).exists() or not os.access(self.root, os.W_OK)):
            return RemoteUpdater(socket)
        if socket:
            log.warning("ota_updater_missing socket=%s root=%s detail=the agent may write its "
                        "slots and updates them itself", socket, self.root)
        from tiepdan.firmware.update.updater import Updater

        return Updater(self.agent.config, self.work)

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
            await self.updater.recover()
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
            self.updater.stop()

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
        with contextlib.suppress(channel.Refused):
            await self.updater.mark_reported()

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
            try:
                committed = await self.updater.commit(self.slot.name)
            except channel.Refused as exc:
                log.error("ota_commit_failed device=%s slot=%s error=%s", self.agent.device,
                          self.slot.name, exc.reason)
                return
            if committed:
                log.info("ota_committed device=%s slot=%s version=%s", self.agent.device,
                         self.slot.name, self.version)
            return
        log.error("ota_health_failed device=%s slot=%s reason=%s", self.agent.device,
                  self.slot.name, problem)
        try:
            rolled_back = await self.updater.rollback(self.slot.name, problem)
        except channel.Refused as exc:
            log.error("ota_rollback_failed device=%s slot=%s error=%s", self.agent.device,
                      self.slot.name, exc.reason)
            rolled_back = False
        if rolled_back:
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
        fetched = await self._fetch(job)
        self._report(job.job, "in_progress", step="downloaded", progress=100.0)
        self._step = "downloaded"
        await self._wait(job, lambda: self._may_install(job),
                         "maintenance window and no live session", "in_progress", "downloaded")
        self._still(job)
        self._step = "installing"
        self._report(job.job, "in_progress", step="installing")
        try:
            installed = await self.updater.install(channel.Install(
                job.target, job=job.job, version=job.version, repository=job.repository))
        except channel.Refused as exc:
            raise self._finish(job.job, exc.status, exc.reason) from None
        if not self._may_install(job):  # a session may have started meanwhile
            await self._wait(job, lambda: self._may_install(job),
                             "maintenance window and no live session", "in_progress",
                             "installing")
        self._step = "restarting"
        try:
            await self.updater.switch(installed, job.target, job.job)
        except channel.Refused as exc:
            raise self._finish(job.job, exc.status, exc.reason) from None
        sent = self._report(job.job, "in_progress", step="restarting")
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await sent
        log.info("ota_switched device=%s slot=%s version=%s", self.agent.device,
                 installed, fetched["version"])
        self.agent.request_stop(restart=True)
        await asyncio.Event().wait()

    # -- fetching --------------------------------------------------------------------------------

    async def _fetch(self, job: protocol.JobDocument) -> dict[str, str]:
        """The updater refreshes the metadata, checks the policy, downloads and verifies (with
        bounded retries); the agent relays its progress, and stops when the job is withdrawn."""
        from tiepdan.firmware.update.updater import Stopping

        self._last_progress = (0.0, -100.0)
        request = channel.Fetch(job=job.job, target=job.target, version=job.version,
                                repository=job.repository)
        work = asyncio.ensure_future(self.updater.fetch(
            request, lambda percent: self._progress(job.job, percent)))
        try:
            while not work.done():
                self._still(job)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL):
                        await asyncio.shield(work)
            return work.result()
        except channel.Refused as exc:
            raise self._finish(job.job, exc.status, exc.reason) from None
        except Stopping:
            raise JobEnded("stopping") from None
        finally:
            if not work.done():
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work

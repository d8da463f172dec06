"""What the controller exposes at `/metrics` (Prometheus text format, `prometheus-client`).

Most figures are read from the controller's own state when scraped (a collector), so nothing
has to be kept in step by hand: the registry for boxes and their last telemetry (box figures
arrive over MQTT, never by scraping boxes), the database for campaigns and enrollments, the
archive index for what was uploaded. Only what has no state to read is counted as it happens:
command latencies. Each controller has its own `CollectorRegistry`, so two in one process (the
tests) never mix figures.

Per-box series exist only for boxes that are online (health) or in a call (call quality), so a
box that left stops its series rather than repeating its last reading.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tiepdan.controller.config import ControllerConfig
from tiepdan.controller.connection import Connection
from tiepdan.controller.enrollment.provisioning import material_for
from tiepdan.controller.fleet.registry import Registry

# Campaign states worth a series (finished campaigns drop out).
CAMPAIGN_STATES = ("running", "paused", "halted")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def central_certificates(config: ControllerConfig) -> dict[str, Path]:
    """The central certificates whose expiry `/metrics` shows, by name."""
    material = material_for(config)
    return {"provisioning-ca": material.ca_cert, "broker": material.broker.cert,
            "enrollment": material.enroll_cert, "controller": material.controller_cert}


class Metrics:
    def __init__(self, registry: Registry, db: Connection,
                 received: Callable[[], tuple[dict[str, int], int]],
                 archived: Callable[[], dict[str, tuple[int, int]]],
                 closed: Callable[[], int],
                 certificates: Mapping[str, Path] | None = None) -> None:
        self.prometheus = CollectorRegistry(auto_describe=False)
        self.commands = Histogram(
            "tiepdan_command_duration_seconds",
            "Seconds from sending a command to a box until its answer (or the timeout)",
            ["command", "outcome"], buckets=LATENCY_BUCKETS, registry=self.prometheus)
        self._collector = _State(registry, db, received, archived, closed,
                                 dict(certificates or {}))
        self.prometheus.register(self._collector)

    def on_command(self, command: str, seconds: float, outcome: str) -> None:
        """CommandClient observer."""
        self.commands.labels(command, outcome).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.prometheus), CONTENT_TYPE_LATEST

    def collect(self) -> Iterator[Metric]:
        """Every metric family now, all on the calling thread."""
        return iter(self.prometheus.collect())

    async def families(self) -> list[Metric]:
        """Every metric family, the event loop held only for the snapshot: for 10,000 boxes
        building the families takes seconds (BENCHMARKS.md), which the loop must not wait."""
        snap = self._collector.snapshot()
        return await asyncio.to_thread(
            lambda: [*self._collector.families(snap), *self.commands.collect()])

    async def render_async(self) -> tuple[bytes, str]:
        """`/metrics`: families and the text built in a worker thread."""
        families = await self.families()

        def text() -> bytes:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Fixed(families))
            return generate_latest(registry)
        return await asyncio.to_thread(text), CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class _Box:
    id: str
    province: str
    state: str
    since: float
    online: bool
    health: dict[str, Any] | None  # replaced whole on each report, never mutated
    call: dict[str, Any] | None
    qos: dict[str, Any] | None


@dataclass(frozen=True)
class _Snapshot:
    devices: list[_Box]
    received: dict[str, int]
    rejected: int
    campaigns: list[tuple[Any, ...]]
    campaign_boxes: list[tuple[Any, ...]]
    provisioned: list[tuple[Any, ...]]


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class _State(Collector):
    def __init__(self, registry: Registry, db: Connection,
                 received: Callable[[], tuple[dict[str, int], int]],
                 archived: Callable[[], dict[str, tuple[int, int]]],
                 closed: Callable[[], int], certificates: dict[str, Path]) -> None:
        self._registry = registry
        self._db = db
        self._received = received
        self._archived = archived
        self._closed = closed
        self._certificates = certificates

    def collect(self) -> Iterable[Metric]:
        return self.families(self.snapshot())

    def snapshot(self) -> _Snapshot:
        """What lives on the event loop (the registry, the shared database connection), read
        there; the families are built from it in a worker thread when scraped."""
        devices = [_Box(d.id, d.province or "unknown", d.state, d.since, d.online, d.health,
                        d.extra.get("call"), d.extra.get("call_qos"))
                   for d in self._registry.devices()]
        received, rejected = self._received()
        marks = ",".join("?" for _ in CAMPAIGN_STATES)
        campaigns = self._db.execute(
            f"SELECT id, state FROM ota_campaigns WHERE state IN ({marks})",
            CAMPAIGN_STATES).fetchall()
        campaign_boxes = self._db.execute(
            f"SELECT b.campaign, b.state, count(*) FROM ota_boxes b JOIN ota_campaigns c "
            f"ON c.id = b.campaign WHERE c.state IN ({marks}) GROUP BY b.campaign, b.state",
            CAMPAIGN_STATES).fetchall()
        provisioned = self._db.execute(
            "SELECT device, enrolled_at, revoked_at, token_expires, cert_not_after "
            "FROM provisioned_boxes").fetchall()
        return _Snapshot(devices, dict(received), rejected, [tuple(r) for r in campaigns],
                         [tuple(r) for r in campaign_boxes], [tuple(r) for r in provisioned])

    def families(self, snap: _Snapshot) -> Iterator[Metric]:
        """Build every family from a snapshot; the archive index is read here (it has its own
        connection and lock, so this may run in a worker thread)."""
        yield from self._boxes(snap.devices)
        yield from self._telemetry(snap.received, snap.rejected)
        yield from self._archive()
        yield from self._campaigns(snap.campaigns, snap.campaign_boxes)
        yield from self._enrollments(snap.provisioned)
        yield self._central_certificates()

    def _central_certificates(self) -> Metric:
        """The fleet hangs on these: a lapsed CA or broker certificate locks every box out."""
        family = GaugeMetricFamily("tiepdan_certificate_not_after_seconds",
                                   "Unix time a central certificate expires (provisioning CA, "
                                   "broker, enrollment site, controller)", labels=["name"])
        for name, path in sorted(self._certificates.items()):
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError):
                continue  # not made yet (no `ca init`), or unreadable: no series
            family.add_metric([name], cert.not_valid_after_utc.timestamp())
        return family

    def _boxes(self, devices: list[_Box]) -> Iterator[Metric]:
        by_province: Counter[tuple[str, str]] = Counter()
        state = GaugeMetricFamily("tiepdan_box_state", "1 for the box's current presence state "
                                  "(init, ready, disconnected, lost, unknown)",
                                  labels=["device", "province", "state"])
        since = GaugeMetricFamily("tiepdan_box_state_since_seconds",
                                  "Unix time the box entered its current state",
                                  labels=["device"])
        gauges = {
            "cpu": GaugeMetricFamily("tiepdan_box_cpu_percent", "Box CPU use, percent",
                                     labels=["device"]),
            "mem": GaugeMetricFamily("tiepdan_box_memory_percent", "Box memory use, percent",
                                     labels=["device"]),
            "disk": GaugeMetricFamily("tiepdan_box_disk_free_ratio",
                                      "Free fraction of the box's data disk", labels=["device"]),
            "temp": GaugeMetricFamily("tiepdan_box_cpu_temperature_celsius",
                                      "Box SoC temperature", labels=["device"]),
            "outbox": GaugeMetricFamily("tiepdan_box_outbox_messages",
                                        "Messages the box holds for the broker",
                                        labels=["device"]),
            "clock": GaugeMetricFamily("tiepdan_box_clock_synced",
                                       "1 when the box's clock is synchronised (NTP)",
                                       labels=["device"]),
            "backlog": GaugeMetricFamily("tiepdan_box_recording_backlog_seconds",
                                         "Age of the oldest recording segment the box holds "
                                         "without the archive's receipt", labels=["device"]),
        }
        call: dict[str, GaugeMetricFamily] = {
            "rtt_ms": GaugeMetricFamily("tiepdan_call_rtt_ms", "Round-trip time of a point's "
                                        "call", labels=["device", "session"]),
            "jitter_ms": GaugeMetricFamily("tiepdan_call_jitter_ms", "Jitter of a point's call",
                                           labels=["device", "session"]),
            "loss": GaugeMetricFamily("tiepdan_call_loss_ratio", "Packet loss of a point's call",
                                      labels=["device", "session", "direction"]),
            "fps": GaugeMetricFamily("tiepdan_call_fps", "Frames per second of a point's call",
                                     labels=["device", "session", "direction"]),
            "kbps": GaugeMetricFamily("tiepdan_call_kbps", "Bit rate of a point's call, kbit/s",
                                      labels=["device", "session", "direction"]),
            "target": GaugeMetricFamily("tiepdan_call_target_kbps", "Bit rate a box's encoder "
                                        "is asked for (adaptive bitrate), kbit/s",
                                        labels=["device", "session"]),
            "height": GaugeMetricFamily("tiepdan_call_video_height_pixels", "Height of the "
                                        "picture a box sends (adaptive bitrate)",
                                        labels=["device", "session"]),
        }
        for d in devices:
            province = d.province
            by_province[(province, d.state)] += 1
            state.add_metric([d.id, province, d.state], 1)
            since.add_metric([d.id], d.since)
            if d.online and d.health:
                _health(gauges, d.id, d.health)
            live = d.call or {}
            if d.online and d.qos and live.get("state") in ("live", "reconnecting"):
                _quality(call, d.id, str(live.get("session", "")), d.qos)
        boxes = GaugeMetricFamily("tiepdan_boxes", "Boxes per province and presence state",
                                  labels=["province", "state"])
        for (province, name), count in sorted(by_province.items()):
            boxes.add_metric([province, name], count)
        yield boxes
        yield state
        yield since
        yield from gauges.values()
        yield from call.values()

    def _telemetry(self, received: dict[str, int], rejected: int) -> Iterator[Metric]:
        family = CounterMetricFamily("tiepdan_mqtt_messages_received",
                                     "MQTT messages from boxes, per kind (tele, evt, ...)",
                                     labels=["kind"])
        for kind, count in sorted(received.items()):
            family.add_metric([kind], count)
        yield family
        yield CounterMetricFamily("tiepdan_mqtt_messages_rejected",
                                  "MQTT messages refused as malformed", value=rejected)

    def _archive(self) -> Iterator[Metric]:
        stored = self._archived()
        uploaded = CounterMetricFamily("tiepdan_archive_uploaded_bytes",
                                       "Ciphertext bytes of recording segments archived, per "
                                       "recorder", labels=["recorder"])
        segments = CounterMetricFamily("tiepdan_archive_segments",
                                       "Recording segments archived, per recorder",
                                       labels=["recorder"])
        for recorder, (count, size) in sorted(stored.items()):
            uploaded.add_metric([recorder], size)
            segments.add_metric([recorder], count)
        yield uploaded
        yield segments
        yield GaugeMetricFamily("tiepdan_archive_bytes", "Bytes of every archived segment",
                                value=sum(size for _, size in stored.values()))
        yield CounterMetricFamily("tiepdan_sessions_closed", "Session records closed and signed",
                                  value=self._closed())

    def _campaigns(self, campaigns: list[tuple[Any, ...]], rows: list[tuple[Any, ...]]
                   ) -> Iterator[Metric]:
        state = GaugeMetricFamily("tiepdan_campaign_state", "1 for an unfinished campaign's "
                                  "state (running, paused, halted)",
                                  labels=["campaign", "state"])
        boxes = GaugeMetricFamily("tiepdan_campaign_boxes", "Boxes of an unfinished campaign "
                                  "per job state", labels=["campaign", "state"])
        for campaign, name in campaigns:
            state.add_metric([campaign, name], 1)
        for campaign, name, count in rows:
            boxes.add_metric([campaign, name], count)
        yield state
        yield boxes

    def _enrollments(self, provisioned: list[tuple[Any, ...]]) -> Iterator[Metric]:
        now = time.time()
        counts: Counter[str] = Counter()
        expiry = GaugeMetricFamily("tiepdan_box_certificate_not_after_seconds",
                                   "Unix time an enrolled box's certificate expires",
                                   labels=["device"])
        for device, enrolled, revoked, token_expires, not_after in provisioned:
            if revoked is not None:
                counts["revoked"] += 1
            elif enrolled is not None:
                counts["enrolled"] += 1
                if not_after is not None:
                    expiry.add_metric([device], not_after)
            else:
                counts["expired" if now >= token_expires else "waiting"] += 1
        family = GaugeMetricFamily("tiepdan_enrollments", "Provisioned boxes per claim state",
                                   labels=["state"])
        for name in ("waiting", "enrolled", "expired", "revoked"):
            family.add_metric([name], counts[name])
        yield family
        yield expiry


def _health(gauges: dict[str, GaugeMetricFamily], device: str, health: dict[str, Any]) -> None:
    gauges["cpu"].add_metric([device], float(health.get("cpu_percent", 0)))
    gauges["mem"].add_metric([device], float(health.get("mem_percent", 0)))
    total = int(health.get("disk_total_bytes", 0))
    if total > 0:
        gauges["disk"].add_metric([device], int(health.get("disk_free_bytes", 0)) / total)
    if health.get("cpu_temp_c") is not None:
        gauges["temp"].add_metric([device], float(health["cpu_temp_c"]))
    gauges["outbox"].add_metric([device], int(health.get("outbox", 0)))
    if health.get("clock_synced") is not None:
        gauges["clock"].add_metric([device], 1 if health["clock_synced"] else 0)
    if health.get("recording_backlog_s") is not None:
        gauges["backlog"].add_metric([device], float(health["recording_backlog_s"]))


def _quality(call: dict[str, GaugeMetricFamily], device: str, session: str,
             qos: dict[str, Any]) -> None:
    if qos.get("rtt_ms") is not None:
        call["rtt_ms"].add_metric([device, session], float(qos["rtt_ms"]))
    if qos.get("jitter_ms") is not None:
        call["jitter_ms"].add_metric([device, session], float(qos["jitter_ms"]))
    if qos.get("target_kbps") is not None:
        call["target"].add_metric([device, session], float(qos["target_kbps"]))
    if qos.get("video_height") is not None:
        call["height"].add_metric([device, session], float(qos["video_height"]))
    for direction in ("sent", "received"):
        if qos.get(f"loss_{direction}") is not None:
            call["loss"].add_metric([device, session, direction], float(qos[f"loss_{direction}"]))
        call["fps"].add_metric([device, session, direction], float(qos.get(f"fps_{direction}", 0)))
        call["kbps"].add_metric([device, session, direction],
                                float(qos.get(f"kbps_{direction}", 0)))

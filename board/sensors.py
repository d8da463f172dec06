"""Health readings of the box: temperature, power, load, disk and clock state."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from tiepdan.board.profile import BoardProfile

__all__ = ["UNDER_VOLTAGE_NOW", "Readings", "Sensors", "clock_synced"]

log = logging.getLogger(__name__)

# Bits of the Pi firmware's get_throttled word (0x10000 and up: "has occurred since boot").
UNDER_VOLTAGE_NOW = 0x1

THERMAL = "sys/class/thermal/thermal_zone0/temp"
THROTTLED = "sys/devices/platform/soc/soc:firmware/get_throttled"
TIMESYNC_DIR = "run/systemd/timesync"


@dataclass(frozen=True)
class Readings:
    """One snapshot; None means this board cannot tell (e.g. no Pi firmware on a PC)."""

    cpu_temp_c: float | None
    throttled: int | None
    under_voltage: bool | None
    cpu_percent: float
    mem_percent: float
    disk_free_bytes: int
    disk_total_bytes: int
    load1: float
    uptime_s: float
    clock_synced: bool | None


class Sensors:
    """Reads `Readings`; `read` blocks (sysfs, maybe a vcgencmd call), so run it in a thread.

    `root` lets tests point the sysfs and /run lookups at a fake tree.
    """

    def __init__(self, profile: BoardProfile, data_dir: Path, root: Path = Path("/")) -> None:
        self.profile = profile
        self.data_dir = data_dir
        self.root = root
        # psutil measures CPU between calls; the first call only sets the baseline.
        psutil.cpu_percent(interval=None)

    def read(self) -> Readings:
        throttled = self._throttled()
        disk = psutil.disk_usage(str(self.data_dir))
        health = Readings(
            cpu_temp_c=self._cpu_temp(),
            throttled=throttled,
            under_voltage=None if throttled is None else bool(throttled & UNDER_VOLTAGE_NOW),
            cpu_percent=float(psutil.cpu_percent(interval=None)),
            mem_percent=float(psutil.virtual_memory().percent),
            disk_free_bytes=int(disk.free),
            disk_total_bytes=int(disk.total),
            load1=float(psutil.getloadavg()[0]),
            uptime_s=max(0.0, time.time() - psutil.boot_time()),
            clock_synced=self._clock_synced(),
        )
        log.debug("health_read %s", health)
        return health

    def _cpu_temp(self) -> float | None:
        text = _read(self.root / THERMAL)
        try:
            return None if text is None else int(text) / 1000
        except ValueError:
            log.warning("cpu_temp_unparsable value=%r", text)
            return None

    def _throttled(self) -> int | None:
        # The sysfs file prints hex without "0x"; vcgencmd prints "throttled=0x50005".
        text = _read(self.root / THROTTLED)
        if text is None and not self.profile.simulated and self.root == Path("/"):
            text = _vcgencmd_throttled()
        if text is None:
            return None
        try:
            return int(text, 16)
        except ValueError:
            log.warning("throttled_unparsable value=%r", text)
            return None

    def _clock_synced(self) -> bool | None:
        return clock_synced(self.root)


def clock_synced(root: Path = Path("/")) -> bool | None:
    """Has systemd-timesyncd synchronised the clock? None when this box cannot tell."""
    # timesyncd touches this file once it has synchronised; without timesyncd (e.g. chrony)
    # there is no cheap, reliable answer.
    folder = root / TIMESYNC_DIR
    if (folder / "synchronized").exists():
        return True
    return False if folder.is_dir() else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _vcgencmd_throttled() -> str | None:
    exe = shutil.which("vcgencmd")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "get_throttled"], capture_output=True, text=True, timeout=2, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("vcgencmd_failed error=%s", exc)
        return None
    return out.strip().partition("=")[2] or None

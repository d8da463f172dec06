"""Installing a bundle into the spare slot (the A/B state itself lives in `boot.py`).

A slot is the whole application environment: `site/` holds the tiepdan wheel and every
dependency wheel of the bundle, unpacked; `bin/tiepdan-agent` (the A/B launcher) and
`bin/tiepdan-enroll` (first boot) run the system interpreter with `site/` first on the path, so
the slot's pinned dependencies win over anything the OS brings, and what the OS alone provides
(python3-picamera2, python3-lgpio) stays importable.

A slot is built in `slots/.<x>.new`, flushed to disk, and renamed into place; `slot.json`,
written last, marks it complete. A crash at any point leaves `current` and the committed slot
untouched, and `recover()` removes the debris. Nothing here touches the running slot.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import stat
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tiepdan.errors import Unavailable
from tiepdan.firmware.update import boot
from tiepdan.ota.bundle import BundleError, dependency_wheels, read_bundle

log = logging.getLogger(__name__)

Checkpoint = Callable[[str], None]

ENROLL = "bin/tiepdan-enroll"
ENROLL_TEMPLATE = """#!{python}
# tiepdan first-boot enrollment from this slot, written by tiepdan {version}. Do not edit.
import os
import sys

slot = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
sys.path.insert(0, os.path.join(slot, "site"))
from tiepdan.firmware.firstboot.enroll import main  # noqa: E402

sys.exit(main())
"""
# What a slot must hold for the units in firmware/systemd/ to start.
ENTRY_POINTS = (boot.LAUNCHER, boot.UPDATER, ENROLL)


class InstallError(Unavailable, RuntimeError):
    """The slot could not be written (disk full, bad wheel); the box is unchanged."""


@dataclass(frozen=True)
class Slot:
    root: Path
    name: str

    @property
    def path(self) -> Path:
        return self.root / "slots" / self.name

    @property
    def version(self) -> str | None:
        return boot.slot_version(self.root, self.name)


def _nothing(step: str) -> None:
    pass


def spare(root: Path) -> str:
    state = boot.read_state(root)
    if state["trial"] is not None:
        raise InstallError(f"slot {state['trial']['slot']} is on trial; no slot is spare")
    committed = state["committed"]
    return "b" if committed == "a" else "a"


def recover(root: Path) -> list[str]:
    """Remove half-built slots left by a crash; returns what was removed."""
    removed = []
    slots = root / "slots"
    for leftover in (*slots.glob(".*.new"), *slots.glob(".*.old")):
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover.name)
    with boot.locked(root):
        stale = root / f".{boot.CURRENT}.tmp"
        if stale.is_symlink():
            stale.unlink()
            removed.append(stale.name)
    if removed:
        log.warning("ota_recovered root=%s removed=%s", root, ",".join(removed))
    return removed


def install(root: Path, bundle: Path, *, slot: str | None = None,
            python: str = sys.executable, checkpoint: Checkpoint = _nothing) -> Slot:
    """Install `bundle` into the spare slot (or `slot`, for the first install of an image)."""
    manifest, wheel = read_bundle(bundle)
    (root / "slots").mkdir(parents=True, exist_ok=True)
    target = slot or spare(root)
    if target not in boot.SLOTS:
        raise InstallError(f"no slot named {target!r}")
    if target == boot.current_slot(root):
        raise InstallError(f"slot {target} is the running slot")
    running = boot.current_slot(root)
    if running is not None and not manifest.dependencies and _dependencies(root, running):
        raise InstallError(f"{manifest.version} carries no dependency wheels but slot {running} "
                           "runs on its own: build it with tools/packaging/artifact.py")
    building = root / "slots" / f".{target}.new"
    shutil.rmtree(building, ignore_errors=True)
    checkpoint("prepared")
    try:
        _unpack(wheel, building / "site")
        for _, dependency in dependency_wheels(bundle, manifest):
            _unpack(dependency, building / "site")
        checkpoint("unpacked")
        _write(building / "boot" / "tiepdan_boot.py", Path(boot.__file__).read_bytes())
        from tiepdan import __version__ as installer

        _write(building / boot.LAUNCHER, boot.LAUNCHER_TEMPLATE.format(
            python=python, version=installer).encode(), mode=0o755)
        _write(building / boot.UPDATER, boot.UPDATER_TEMPLATE.format(
            python=python, version=installer).encode(), mode=0o755)
        _write(building / ENROLL, ENROLL_TEMPLATE.format(
            python=python, version=installer).encode(), mode=0o755)
        _write(building / "slot.json", json.dumps({
            "version": manifest.version, "wheel": manifest.wheel,
            "wheel_sha256": manifest.wheel_sha256, "installed": time.time(),
            "target": manifest.target,
            "dependencies": {d.name: d.version for d in manifest.dependencies},
        }, indent=1).encode())
        seal(building)
        _sync_tree(building)
        checkpoint("synced")
    except OSError as exc:
        shutil.rmtree(building, ignore_errors=True)
        raise InstallError(f"cannot write slot {target}: {exc.strerror or exc}") from exc
    except BundleError as exc:
        shutil.rmtree(building, ignore_errors=True)
        raise InstallError(f"cannot install into slot {target}: {exc}") from exc
    final = root / "slots" / target
    old = root / "slots" / f".{target}.old"
    if final.exists():
        final.rename(old)
        checkpoint("moved_old")
    building.rename(final)
    boot.fsync_dir(root / "slots")
    checkpoint("renamed")
    shutil.rmtree(old, ignore_errors=True)
    log.info("ota_installed root=%s slot=%s version=%s", root, target, manifest.version)
    return Slot(root, target)


def install_image(root: Path, bundle: Path, python: str = sys.executable) -> Slot:
    """First install on a fresh image: slot a, committed, `current` pointing at it."""
    root.mkdir(parents=True, exist_ok=True)
    if boot.current_slot(root) is not None:
        raise InstallError(f"{root} already has a current slot")
    installed = install(root, bundle, slot="a", python=python)
    with boot.locked(root):
        boot.write_state(root, {"committed": "a", "trial": None, "outcome": None})
        boot.point_current(root, "a")
    seal(root)
    return installed


def seal(top: Path) -> None:
    """Nobody but the slots' owner may write them: no group or other write bit anywhere under
    `top`, and, when installing as root, root owns everything (the agent's user then cannot
    change the code it boots next; the updater, as root, can)."""
    as_root = os.geteuid() == 0
    for folder, dirs, files in os.walk(top):
        for name in (folder, *(os.path.join(folder, n) for n in (*dirs, *files))):
            info = os.lstat(name)
            if as_root and (info.st_uid or info.st_gid):
                os.lchown(name, 0, 0)
            if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o022:
                os.chmod(name, stat.S_IMODE(info.st_mode) & ~0o022)


def _dependencies(root: Path, slot: str) -> dict[str, str]:
    try:
        info = json.loads((root / "slots" / slot / "slot.json").read_text())
    except (OSError, ValueError):
        return {}
    found = info.get("dependencies") if isinstance(info, dict) else None
    return found if isinstance(found, dict) else {}


def _unpack(wheel: bytes, dest: Path) -> None:
    """Extract a wheel into the site directory (PEP 427): its root and its `.data/purelib`
    and `.data/platlib` go there; scripts, headers and data files are not needed by a slot,
    whose entry points are its own launchers."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(wheel))
    except zipfile.BadZipFile as exc:
        raise InstallError(f"wheel is not a zip file: {exc}") from None
    with archive:
        for info in archive.infolist():
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts or not name.parts:
                raise InstallError(f"wheel member {info.filename!r} escapes the slot")
            if info.is_dir():
                continue
            parts = name.parts
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            _write(dest.joinpath(*parts), archive.read(info))


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _sync_tree(top: Path) -> None:
    """One fsync per file and folder, after all are written (cheaper than syncing as we go)."""
    for folder, _, files in os.walk(top):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        boot.fsync_dir(Path(folder))

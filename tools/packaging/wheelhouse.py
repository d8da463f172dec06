"""Dependency wheels for an artifact: downloaded for a target platform, or re-packed from an
installed environment.

`download` is the build machine's way (pip resolves against PyPI for another platform, binary
wheels only). `from_installed` makes the same set without the network, from the distributions
already installed in this interpreter's environment, so CI and tests build an x86_64 artifact
offline: each distribution's files, as its RECORD lists them, go back into a wheel named with
the tags its WHEEL file kept. Re-packed wheels are byte-for-byte reproducible (fixed times,
sorted members), so a second build reuses them from the cache folder.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

log = logging.getLogger(__name__)

# Files pip writes at install time that are not part of a wheel.
_INSTALL_ONLY = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class WheelhouseError(RuntimeError):
    """A dependency cannot be found or packed; the message says which."""


def resolve_installed(requirement: str, *, exclude: Iterable[str] = ()
                      ) -> list[metadata.Distribution]:
    """The installed distributions `requirement` needs, transitively, markers evaluated for
    this interpreter with each requirer's extras."""
    skip = {canonicalize_name(n) for n in exclude}
    found: dict[str, metadata.Distribution] = {}
    extras_done: set[tuple[str, str]] = set()
    pending = [Requirement(requirement)]
    base_env = {k: str(v) for k, v in default_environment().items()}
    while pending:
        req = pending.pop()
        name = canonicalize_name(req.name)
        try:
            dist = found.get(name) or metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise WheelhouseError(f"{req.name} is required but not installed here") from None
        if dist.version not in req.specifier and req.specifier:
            raise WheelhouseError(f"{req.name} {dist.version} is installed, {req} is required")
        if name not in skip:
            found[name] = dist
        for extra in ("", *sorted(req.extras)):
            if (name, extra) in extras_done:
                continue
            extras_done.add((name, extra))
            for line in dist.requires or []:
                sub = Requirement(line)
                if sub.marker is not None and not sub.marker.evaluate({**base_env,
                                                                       "extra": extra}):
                    continue
                pending.append(sub)
    return sorted(found.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def wheel_name(dist: metadata.Distribution) -> str:
    """PEP 427 file name from the installed metadata and the tags in its WHEEL file."""
    text = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Tag:")]
    if not tags:
        raise WheelhouseError(f"{dist.metadata['Name']}: no WHEEL tags recorded (installed "
                              "from a source tree?)")
    pys, abis, plats = (sorted({t.split("-")[i] for t in tags}) for i in range(3))
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    return f"{name}-{dist.version}-{'.'.join(pys)}-{'.'.join(abis)}-{'.'.join(plats)}.whl"


def repack(dist: metadata.Distribution, out: Path) -> Path:
    """A wheel of an installed distribution, in `out`; reused when already there."""
    target = out / wheel_name(dist)
    if target.exists():
        return target
    files = dist.files
    if files is None:
        raise WheelhouseError(f"{dist.metadata['Name']}: no RECORD to pack from")
    base = Path(str(dist.locate_file("")))
    members: list[tuple[str, Path]] = []
    for entry in files:
        rel = entry.as_posix()
        if rel.startswith("..") or "__pycache__" in entry.parts or rel.endswith(".pyc"):
            continue
        if ".dist-info/" in rel and entry.name in _INSTALL_ONLY:
            continue
        path = base / rel
        if not path.is_file():
            raise WheelhouseError(f"{dist.metadata['Name']}: {rel} is listed but missing")
        members.append((rel, path))
    info_dir = next((rel.split("/")[0] for rel, _ in members if ".dist-info/" in rel), None)
    if info_dir is None:
        raise WheelhouseError(f"{dist.metadata['Name']}: no .dist-info among its files")
    out.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    record = []
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for rel, path in sorted(members):
            data = path.read_bytes()
            info = zipfile.ZipInfo(rel, _ZIP_TIME)
            info.external_attr = (0o755 if path.stat().st_mode & 0o111 else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{rel},sha256={digest.decode()},{len(data)}")
        record.append(f"{info_dir}/RECORD,,")
        info = zipfile.ZipInfo(f"{info_dir}/RECORD", _ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, "\n".join(record) + "\n")
    tmp.replace(target)
    log.info("wheel_repacked dist=%s version=%s file=%s", dist.metadata["Name"], dist.version,
             target.name)
    return target


def from_installed(requirement: str, out: Path, *, exclude: Iterable[str] = ()) -> list[Path]:
    """Wheels of every installed distribution `requirement` needs (offline)."""
    return [repack(d, out) for d in resolve_installed(requirement, exclude=exclude)]


def download(requirement: str, out: Path, *, platforms: Iterable[str], python_version: str,
             abi: str) -> list[Path]:
    """Resolve and download binary wheels for another platform with pip (needs PyPI)."""
    out.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in out.glob("*.whl")}
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--only-binary=:all:", "--implementation", "cp", "--python-version",
               python_version, "--abi", abi, "--abi", "abi3", "--abi", "none", "--dest",
               str(out)]
    for platform in platforms:
        command += ["--platform", platform]
    result = subprocess.run([*command, requirement], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise WheelhouseError(f"pip download failed: {result.stderr.strip()[-2000:]}")
    log.info("wheels_downloaded new=%d", len({p.name for p in out.glob('*.whl')} - before))
    return sorted(out.glob("*.whl"))

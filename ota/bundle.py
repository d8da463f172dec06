"""Update bundles: the tiepdan wheel at one version, its dependencies' wheels and a manifest.

A bundle is the whole application environment of one target (issue 12): the same file is the
first install (inside the Debian package) and the OTA update, so a fix in a dependency reaches
the fleet the way an app change does. The manifest pins every dependency wheel by name, version
and SHA-256; a bundle with no dependency wheels (format 1, or tests) runs on the interpreter's
own packages. Whether a box may install it is decided by the TUF-signed targets metadata, not
by anything inside the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated

import msgspec
from packaging.version import InvalidVersion, Version

from tiepdan.errors import BadInput

FORMAT = 2
FORMATS = (1, 2)
MANIFEST = "manifest.json"
DEPENDENCY_DIR = "wheels"
PACKAGE = "tiepdan"
MAX_MANIFEST = 64 * 1024
# What a build copies from a source tree: the package links and the folders they point to.
SOURCE_ENTRIES = ("pyproject.toml", "setup.py", "README.md", "tiepdan", "board", "firmware",
                  "controller", "ota", "provisioning", "tools")
# What a box runs (issue 10/12): the box's installable never carries the controller, the
# technician's tools or the provisioning CA.
BOX_PARTS = ("board", "firmware", "ota")
_PARTS = ("board", "firmware", "controller", "ota", "provisioning", "tools")
# The central server's wheel is the whole tree for now (its tools/ import board); the
# box/controller split of issue 10 decides what it may leave out.
SERVER_PARTS = _PARTS
_VERSION_LINE = re.compile(r'^__version__ = "[^"]*"$', re.M)
_WHEEL_NAME = re.compile(r"^tiepdan-(?P<version>[^-]+)-py3-none-any\.whl\Z")
# PEP 427 file names: distribution-version(-build)?-python-abi-platform.whl
_ANY_WHEEL = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)(-\d[^-]*)?"
                        r"-[^-]+-[^-]+-[^-]+\.whl\Z")
MAX_WHEEL = 512 * 2**20


class BundleError(BadInput):
    """A bundle that is not what it claims to be, or cannot be built."""


Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]


class Dependency(msgspec.Struct, frozen=True):
    """One pinned dependency wheel, stored in the bundle as `wheels/<file>`."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")]
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    file: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}\.whl\Z")]
    sha256: Sha256


class BundleManifest(msgspec.Struct, frozen=True):
    format: Annotated[int, msgspec.Meta(ge=1)]
    package: str
    version: str
    wheel: Annotated[str, msgspec.Meta(pattern=r"^tiepdan-[^/]+-py3-none-any\.whl\Z")]
    wheel_sha256: Sha256
    built_ms: int
    # format 2: the environment. `target` names the platform the wheels are for ("any" when
    # there are none); `system` lists what the OS must bring (Debian packages).
    target: str = "any"
    dependencies: tuple[Dependency, ...] = ()
    system: tuple[str, ...] = ()


def check_version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise BundleError(f"not a PEP 440 version: {text!r}") from None


def bundle_name(version: str) -> str:
    """The bundle's file name, which is also its TUF target path."""
    return f"{PACKAGE}-{version}.tar"


def build_wheel(source: Path, version: str, out_dir: Path,
                parts: Sequence[str] = _PARTS) -> Path:
    """Build the tiepdan wheel of `source` with `__version__` set to `version`.

    The tree is copied first, so the working copy is never modified; pip runs the project's
    own build backend. `parts` limits the wheel to those packages (BOX_PARTS for a box);
    console scripts of the parts left out are dropped with them.
    """
    check_version(version)
    unknown = set(parts) - set(_PARTS)
    if unknown:
        raise BundleError(f"unknown parts {sorted(unknown)}; known: {', '.join(_PARTS)}")
    left_out = [p for p in _PARTS if p not in parts]
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tiepdan-build-") as tmp:
        stage = Path(tmp) / "src"
        stage.mkdir()
        for entry in SOURCE_ENTRIES:
            if entry in left_out:
                continue
            src = source / entry
            if not src.exists() and not src.is_symlink():
                raise BundleError(f"{source} is not a tiepdan source tree: {entry} is missing")
            if src.is_dir() and not src.is_symlink():
                shutil.copytree(src, stage / entry, symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, stage / entry, follow_symlinks=False)
        init = stage / "tiepdan" / "__init__.py"
        text = init.read_text()
        if not _VERSION_LINE.search(text):
            raise BundleError(f"{init} has no __version__ line")
        init.write_text(_VERSION_LINE.sub(f'__version__ = "{version}"', text, count=1))
        for part in left_out:
            (stage / "tiepdan" / part).unlink(missing_ok=True)
        wheels = Path(tmp) / "wheels"
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
             "--disable-pip-version-check", "-w", str(wheels), str(stage)],
            capture_output=True, text=True, check=False,
            env={**os.environ, "TIEPDAN_PARTS": ",".join(parts)})  # setup.py drops the rest
        if result.returncode != 0:
            raise BundleError(f"pip wheel failed: {result.stderr.strip()[-2000:]}")
        built = sorted(wheels.glob("tiepdan-*.whl"))
        if len(built) != 1:
            raise BundleError(f"expected one tiepdan wheel, found {[p.name for p in built]}")
        target = out_dir / built[0].name
        shutil.move(str(built[0]), target)
    return target



def wheel_version(wheel: Path) -> str:
    match = _WHEEL_NAME.fullmatch(wheel.name)
    if match is None:
        raise BundleError(f"{wheel.name} is not a pure-Python tiepdan wheel")
    return match["version"]


def dependency_of(wheel: Path) -> Dependency:
    """A dependency wheel's pin: its name and version from the file name, its hash."""
    match = _ANY_WHEEL.match(wheel.name)
    if match is None:
        raise BundleError(f"{wheel.name} is not a wheel file name")
    digest = hashlib.sha256()
    with wheel.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return Dependency(name=match["name"], version=match["version"], file=wheel.name,
                      sha256=digest.hexdigest())


def build_bundle(wheel: Path, out_dir: Path, dependencies: Sequence[Path] = (), *,
                 target: str = "any", system: Sequence[str] = ()) -> Path:
    """Wrap the tiepdan wheel, its dependency wheels and the manifest into
    `tiepdan-<version>.tar` in `out_dir`."""
    version = wheel_version(wheel)
    check_version(version)
    data = wheel.read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile as exc:
        raise BundleError(f"{wheel.name} is not a zip file: {exc}") from None
    if "tiepdan/__init__.py" not in names:
        raise BundleError(f"{wheel.name} does not contain the tiepdan package")
    pins = tuple(sorted((dependency_of(p) for p in dependencies), key=lambda d: d.name.lower()))
    names = [_normal(d.name) for d in pins]
    if len(set(names)) != len(names) or PACKAGE in names:
        raise BundleError(f"dependency wheels name a distribution twice: {sorted(names)}")
    manifest = BundleManifest(format=FORMAT, package=PACKAGE, version=version, wheel=wheel.name,
                        wheel_sha256=hashlib.sha256(data).hexdigest(),
                        built_ms=time.time_ns() // 1_000_000, target=target,
                        dependencies=pins, system=tuple(system))
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = out_dir / bundle_name(version)
    tmp = bundle.with_name(f".{bundle.name}.tmp")
    mtime = manifest.built_ms // 1000
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, payload in ((MANIFEST, msgspec.json.encode(manifest)), (wheel.name, data)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            info.mtime = mtime
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(payload))
        by_file = {p.name: p for p in dependencies}
        for pin in pins:
            info = tar.gettarinfo(str(by_file[pin.file]), f"{DEPENDENCY_DIR}/{pin.file}")
            info.mtime, info.mode, info.uid, info.gid = mtime, 0o644, 0, 0
            info.uname = info.gname = ""
            with by_file[pin.file].open("rb") as handle:
                tar.addfile(info, handle)
    tmp.replace(bundle)
    return bundle


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_bundle(path: Path) -> tuple[BundleManifest, bytes]:
    """The manifest and the wheel's bytes, after checking that they belong together."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = {m.name: m for m in tar.getmembers()}
            if MANIFEST not in members:
                raise BundleError(f"bundle holds {sorted(members)[:5]}, not a manifest")
            manifest = msgspec.json.decode(_member(tar, members[MANIFEST], MAX_MANIFEST),
                                           type=BundleManifest)
            expected = {MANIFEST, manifest.wheel,
                        *(f"{DEPENDENCY_DIR}/{d.file}" for d in manifest.dependencies)}
            if set(members) != expected:
                raise BundleError(f"bundle members do not match its manifest: missing "
                                  f"{sorted(expected - set(members))[:5]}, extra "
                                  f"{sorted(set(members) - expected)[:5]}")
            wheel = _member(tar, members[manifest.wheel], MAX_WHEEL)
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{path.name}: not a readable bundle: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BundleError(f"{path.name}: invalid manifest: {exc}") from None
    if manifest.format not in FORMATS or manifest.package != PACKAGE:
        raise BundleError(f"{path.name}: unsupported bundle format {manifest.format} "
                          f"of {manifest.package!r}")
    if hashlib.sha256(wheel).hexdigest() != manifest.wheel_sha256:
        raise BundleError(f"{path.name}: wheel does not match the manifest's hash")
    if wheel_version(Path(manifest.wheel)) != manifest.version:
        raise BundleError(f"{path.name}: wheel and manifest disagree on the version")
    check_version(manifest.version)
    return manifest, wheel


def dependency_wheels(path: Path, manifest: BundleManifest) -> Iterator[tuple[Dependency, bytes]]:
    """Each dependency wheel of a bundle `read_bundle` accepted, one at a time (a Pi has little
    memory to spare), each checked against its pinned hash before it is handed out."""
    pins = {f"{DEPENDENCY_DIR}/{d.file}": d for d in manifest.dependencies}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                pin = pins.get(member.name)
                if pin is None:
                    continue
                data = _member(tar, member, MAX_WHEEL)
                if hashlib.sha256(data).hexdigest() != pin.sha256:
                    raise BundleError(f"{path.name}: {pin.file} does not match its pinned hash")
                yield pin, data
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{path.name}: not a readable bundle: {exc}") from None


def _member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if not member.isfile() or member.size > limit:
        raise BundleError(f"bundle member {member.name} is not a regular file within limits")
    handle = tar.extractfile(member)
    if handle is None:
        raise BundleError(f"bundle member {member.name} is unreadable")
    return handle.read()

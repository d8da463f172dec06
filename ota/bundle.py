"""Update bundles: the tiepdan wheel at one version plus a manifest, in one tar file.

The wheel is pure Python; the box's base image brings the Python dependencies. The manifest says
what the bundle is; whether a box may install it (and whether that is a downgrade the admin
meant) is decided by the TUF-signed targets metadata, not by anything inside the file.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Annotated

import msgspec
from packaging.version import InvalidVersion, Version

FORMAT = 1
MANIFEST = "manifest.json"
PACKAGE = "tiepdan"
MAX_MANIFEST = 64 * 1024
# What a build copies from a source tree: the package links and the folders they point to.
SOURCE_ENTRIES = ("pyproject.toml", "README.md", "tiepdan", "board", "firmware", "controller",
                  "ota", "provisioning", "tools")
_VERSION_LINE = re.compile(r'^__version__ = "[^"]*"$', re.M)
_WHEEL_NAME = re.compile(r"^tiepdan-(?P<version>[^-]+)-py3-none-any\.whl\Z")


class BundleError(ValueError):
    """A bundle that is not what it claims to be, or cannot be built."""


class Manifest(msgspec.Struct, frozen=True):
    format: Annotated[int, msgspec.Meta(ge=1)]
    package: str
    version: str
    wheel: Annotated[str, msgspec.Meta(pattern=r"^tiepdan-[^/]+-py3-none-any\.whl\Z")]
    wheel_sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]
    built_ms: int


def check_version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise BundleError(f"not a PEP 440 version: {text!r}") from None


def bundle_name(version: str) -> str:
    """The bundle's file name, which is also its TUF target path."""
    return f"{PACKAGE}-{version}.tar"


def build_wheel(source: Path, version: str, out_dir: Path) -> Path:
    """Build the tiepdan wheel of `source` with `__version__` set to `version`.

    The tree is copied first, so the working copy is never modified; pip runs the project's
    own build backend.
    """
    check_version(version)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tiepdan-build-") as tmp:
        stage = Path(tmp) / "src"
        stage.mkdir()
        for entry in SOURCE_ENTRIES:
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
        wheels = Path(tmp) / "wheels"
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
             "--disable-pip-version-check", "-w", str(wheels), str(stage)],
            capture_output=True, text=True, check=False)
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


def build_bundle(wheel: Path, out_dir: Path) -> Path:
    """Wrap a wheel and its manifest into `tiepdan-<version>.tar` in `out_dir`."""
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
    manifest = Manifest(format=FORMAT, package=PACKAGE, version=version, wheel=wheel.name,
                        wheel_sha256=hashlib.sha256(data).hexdigest(),
                        built_ms=time.time_ns() // 1_000_000)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / bundle_name(version)
    tmp = target.with_name(f".{target.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, payload in ((MANIFEST, msgspec.json.encode(manifest)), (wheel.name, data)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            info.mtime = manifest.built_ms // 1000
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(payload))
    tmp.replace(target)
    return target


def read_bundle(path: Path) -> tuple[Manifest, bytes]:
    """The manifest and the wheel's bytes, after checking that they belong together."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = {m.name: m for m in tar.getmembers()}
            if MANIFEST not in members or len(members) != 2:
                raise BundleError(f"bundle holds {sorted(members)[:5]}, not a manifest and a wheel")
            manifest = msgspec.json.decode(_member(tar, members[MANIFEST], MAX_MANIFEST),
                                           type=Manifest)
            if manifest.wheel not in members:
                raise BundleError(f"bundle lacks {manifest.wheel}")
            wheel = _member(tar, members[manifest.wheel], 512 * 2**20)
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{path.name}: not a readable bundle: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BundleError(f"{path.name}: invalid manifest: {exc}") from None
    if manifest.format != FORMAT or manifest.package != PACKAGE:
        raise BundleError(f"{path.name}: unsupported bundle format {manifest.format} "
                          f"of {manifest.package!r}")
    if hashlib.sha256(wheel).hexdigest() != manifest.wheel_sha256:
        raise BundleError(f"{path.name}: wheel does not match the manifest's hash")
    if wheel_version(Path(manifest.wheel)) != manifest.version:
        raise BundleError(f"{path.name}: wheel and manifest disagree on the version")
    check_version(manifest.version)
    return manifest, wheel


def _member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if not member.isfile() or member.size > limit:
        raise BundleError(f"bundle member {member.name} is not a regular file within limits")
    handle = tar.extractfile(member)
    if handle is None:
        raise BundleError(f"bundle member {member.name} is unreadable")
    return handle.read()

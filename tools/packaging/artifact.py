"""`python -m tiepdan.tools.packaging.artifact`: one artifact per target (issue 12).

The artifact is an update bundle (ota/bundle.py) that holds the whole application environment
of a box: the box-only tiepdan wheel (board, firmware, ota; never controller, tools or
provisioning) and every dependency as a wheel for the target, pinned by hash, plus a
`requirements.lock` beside it in pip's `--require-hashes` format. The same file goes into the
Debian package as slot A and is published to the TUF repository as the OTA target.

    # on a build machine with PyPI (any architecture): the Raspberry Pi OS bookworm artifact
    python -m tiepdan.tools.packaging.artifact --target linux_aarch64 --version 1.2.0
    # offline, from this environment's installed distributions (CI, tests): x86_64 only
    python -m tiepdan.tools.packaging.artifact --target linux_x86_64 --version 1.2.0 --offline
    # the central server's: the whole tiepdan wheel and the `controller` extra
    python -m tiepdan.tools.packaging.artifact --role controller --version 1.2.0

A controller artifact has the same format (dist/controller-<target>/tiepdan-<version>.tar) and
is installed by tools/packaging/server/install-controller into a venv, hashes checked by pip.
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tiepdan.firmware.core import logs
from tiepdan.ota.bundle import (
    BOX_PARTS,
    SERVER_PARTS,
    BundleError,
    build_bundle,
    build_wheel,
    read_bundle,
)
from tiepdan.tools.packaging import wheelhouse

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1]
SERVER_FILES = ("install-controller", "tiepdan-controller.service", "tiepdan-controller.rules")
# The box's Python environment: the core and the `box` extra. Audio and camera bindings come
# from the OS on Raspberry Pi OS (the slot launcher keeps the system packages importable).
ROLES = {"box": ("box", BOX_PARTS), "controller": ("controller", SERVER_PARTS)}
CACHE = Path.home() / ".cache" / "tiepdan" / "wheelhouse"


@dataclass(frozen=True)
class Target:
    """A platform the fleet runs: what pip resolves for and what Debian must bring."""

    name: str
    deb_arch: str
    machine: str
    platforms: tuple[str, ...]
    system: tuple[str, ...]


# Raspberry Pi OS and Debian bookworm: Python 3.11, glibc 2.36.
PYTHON = "3.11"
ABI = "cp311"
TARGETS = {
    "linux_aarch64": Target(
        "linux_aarch64", "arm64", "aarch64",
        ("manylinux_2_36_aarch64", "manylinux_2_34_aarch64", "manylinux_2_28_aarch64",
         "manylinux_2_17_aarch64", "manylinux2014_aarch64"),
        ("python3 (>= 3.11)", "python3 (<< 3.12)", "python3-picamera2", "python3-lgpio",
         "python3-pyaudio")),
    "linux_x86_64": Target(
        "linux_x86_64", "amd64", "x86_64",
        ("manylinux_2_36_x86_64", "manylinux_2_34_x86_64", "manylinux_2_28_x86_64",
         "manylinux_2_17_x86_64", "manylinux2014_x86_64"),
        ("python3 (>= 3.11)", "python3 (<< 3.12)")),
}


# The central server runs Debian bookworm; Mosquitto and the venv module come from apt.
SERVER_SYSTEM = ("python3 (>= 3.11)", "python3 (<< 3.12)", "python3-venv", "mosquitto")


def host_target() -> Target:
    for target in TARGETS.values():
        if target.machine == platform.machine():
            return target
    raise BundleError(f"no artifact target for this machine ({platform.machine()})")


def build(target: Target, version: str, out: Path, *, offline: bool,
          source: Path = SOURCE, cache: Path = CACHE, role: str = "box") -> Path:
    """Build `out/<target>/tiepdan-<version>.tar` (a box's; `out/controller-<target>/` for the
    controller's) and its `requirements-<version>.lock`."""
    extra, parts = ROLES[role]
    dest = out / (target.name if role == "box" else f"{role}-{target.name}")
    dest.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    work = dest / f".build-{version}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        wheel = build_wheel(source, version, work, parts)
        if offline:
            if target.machine != platform.machine() or sys.version_info[:2] != (3, 11):
                raise BundleError(f"--offline packs this environment ({platform.machine()}, "
                                  f"Python {sys.version_info[0]}.{sys.version_info[1]}): "
                                  f"it cannot make {target.name} for Python {PYTHON}")
            wheels = wheelhouse.from_installed(f"tiepdan[{extra}]", cache / target.name,
                                               exclude=["tiepdan"])
        else:
            wheels = [w for w in wheelhouse.download(
                f"{wheel}[{extra}]", work / "wheels", platforms=target.platforms,
                python_version=PYTHON, abi=ABI) if not w.name.startswith("tiepdan-")]
        system = target.system if role == "box" else SERVER_SYSTEM
        bundle = build_bundle(wheel, dest, wheels, target=target.name, system=system)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if role == "controller":
        for name in SERVER_FILES:  # the server's release: artifact, installer, unit, rule
            shutil.copy2(HERE / "server" / name, dest / name)
    manifest, _ = read_bundle(bundle)
    lock = "".join(f"{d.name}=={d.version} --hash=sha256:{d.sha256}\n"
                   for d in manifest.dependencies)
    (dest / f"requirements-{version}.lock").write_text(
        f"# tiepdan {version} for {target.name}, pinned by tools/packaging/artifact.py\n{lock}")
    log.info("artifact_built target=%s version=%s file=%s bytes=%d dependencies=%d "
             "seconds=%.1f", target.name, version, bundle, bundle.stat().st_size,
             len(manifest.dependencies), time.monotonic() - started)
    return bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiepdan.tools.packaging.artifact",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=sorted(TARGETS), default=None,
                        help="default: this machine's")
    parser.add_argument("--role", choices=sorted(ROLES), default="box",
                        help="a box's artifact (default) or the central server's")
    parser.add_argument("--version", required=True, help="PEP 440 version of this build")
    parser.add_argument("--out", type=Path, default=Path("dist"))
    parser.add_argument("--offline", action="store_true",
                        help="pack the dependencies installed here instead of downloading")
    parser.add_argument("--cache", type=Path, default=CACHE,
                        help="where offline builds keep re-packed wheels (default %(default)s)")
    args = parser.parse_args(argv)
    logs.setup()
    target = TARGETS[args.target] if args.target else host_target()
    try:
        bundle = build(target, args.version, args.out, offline=args.offline, cache=args.cache,
                       role=args.role)
    except (BundleError, wheelhouse.WheelhouseError) as exc:
        log.error("artifact_failed target=%s error=%s", target.name, exc)
        return 1
    sys.stdout.write(f"{bundle}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

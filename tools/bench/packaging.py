"""Packaging benchmark (issue 12): artifact size per target, cold and warm build time, the
Debian package's build and install time.

- x86_64 artifact, offline (re-packed from this environment): cold (empty wheel cache) and warm.
- aarch64 artifact (`--aarch64`, needs PyPI): cold (an empty pip cache) and warm.
- the .deb of the x86_64 artifact, and `dpkg -i` of it into a fresh Debian bookworm root
  (mmdebstrap, cached; needs root), against a same-run floor: unzipping the same wheels with
  Python's zipfile into an empty folder (the least any install of them must do).

    python -m tiepdan.tools.bench.packaging [--aarch64]

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from tiepdan.tools.packaging import artifact, deb

VERSION = "1.0.0"


def timed(what: str, fn: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = fn()
    seconds = time.monotonic() - started
    print(f"  {what:<44} {seconds:7.1f} s")
    return result, seconds


def unzip_floor(bundle: Path, into: Path) -> float:
    """Extract every wheel of the bundle with zipfile: the floor of any install."""
    started = time.monotonic()
    with tarfile.open(bundle) as tar:
        for member in tar:
            if member.name.endswith(".whl"):
                handle = tar.extractfile(member)
                assert handle is not None
                with zipfile.ZipFile(handle) as wheel:
                    wheel.extractall(into)
    subprocess.run(["sync"], check=True)
    return time.monotonic() - started


def root_tarball() -> Path | None:
    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        return None
    cache = Path(os.environ.get("TIEPDAN_ROOT_CACHE", "/var/cache/tiepdan-tests"))
    found = sorted(cache.glob("bookworm-minbase-*.tar"), key=lambda p: p.stat().st_size)
    if found:
        return found[0]
    print("  (no cached bookworm root: run tests/deploy once to make it)")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aarch64", action="store_true",
                        help="also build the Raspberry Pi artifact (downloads from PyPI)")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"bench": "packaging"}
    with tempfile.TemporaryDirectory(prefix="tiepdan-bench-pkg-") as tmp:
        work = Path(tmp)
        host = artifact.host_target()
        print(f"artifact {host.name} (offline, from this environment)")
        cache = work / "wheel-cache"
        _, cold = timed("cold (empty wheel cache)", lambda: artifact.build(
            host, VERSION, work / "cold", offline=True, cache=cache))
        bundle, warm = timed("warm", lambda: artifact.build(
            host, VERSION, work / "warm", offline=True, cache=cache))
        result[host.name] = {"bytes": bundle.stat().st_size, "cold_s": round(cold, 2),
                             "warm_s": round(warm, 2)}
        print(f"  size {bundle.stat().st_size / 1e6:.1f} MB")
        if args.aarch64:
            target = artifact.TARGETS["linux_aarch64"]
            print(f"artifact {target.name} (pip download from PyPI)")
            pip_cache = work / "pip-cache"
            os.environ["PIP_CACHE_DIR"] = str(pip_cache)
            _, cold = timed("cold (empty pip cache)", lambda: artifact.build(
                target, VERSION, work / "arm-cold", offline=False))
            arm, warm = timed("warm (pip cache)", lambda: artifact.build(
                target, VERSION, work / "arm-warm", offline=False))
            result[target.name] = {"bytes": arm.stat().st_size, "cold_s": round(cold, 2),
                                   "warm_s": round(warm, 2)}
            print(f"  size {arm.stat().st_size / 1e6:.1f} MB")
        print("Debian package")
        package, seconds = timed("dpkg-deb build", lambda: deb.build(bundle, work / "deb"))
        result["deb"] = {"bytes": package.stat().st_size, "build_s": round(seconds, 2)}
        tarball = root_tarball()
        if tarball is not None:
            root = work / "root"
            root.mkdir()
            subprocess.run(["tar", "-xf", str(tarball), "-C", str(root)], check=True)
            shutil.copy(package, root / "tmp" / package.name)
            _, install = timed("dpkg -i into a clean bookworm root", lambda: subprocess.run(
                ["chroot", str(root), "dpkg", "-i", f"/tmp/{package.name}"],
                check=True, capture_output=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}))
            subprocess.run(["sync"], check=True)
            floor_dir = work / "floor"
            floor_dir.mkdir()
            floor = unzip_floor(bundle, floor_dir)
            print(f"  {'floor: unzip the same wheels':<44} {floor:7.1f} s")
            print(f"  install / floor {install / floor:.2f}")
            result["install"] = {"dpkg_i_s": round(install, 2), "floor_unzip_s": round(floor, 2),
                                 "ratio": round(install / floor, 2)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

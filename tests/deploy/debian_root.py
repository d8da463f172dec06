"""A clean Debian bookworm root made from Debian's packages (mmdebstrap), cached as a tarball
under a stable path so that reruns only unpack it, and helpers to run commands inside it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("TIEPDAN_ROOT_CACHE", "/var/cache/tiepdan-tests"))
SUITE = "bookworm"
# What Raspberry Pi OS Lite has that the package relies on; the package pulls nothing else.
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
INCLUDE = ("python3", "systemd", "adduser", "init-system-helpers", "ca-certificates")
# The central server's: what README's "Deploying the central server" has the admin install.
SERVER_INCLUDE = (*INCLUDE, "python3-venv", "mosquitto")


# Raspberry Pi OS's interpreter, arm64, only unpacked (nothing runs at build time: no binfmt
# needed); qemu-user-static runs it.
ARM64_INCLUDE = ("python3.11-minimal", "libpython3.11-stdlib", "python3.11", "libgcc-s1",
                 "libstdc++6")


def root_tarball(include: tuple[str, ...] = INCLUDE, arch: str = "") -> Path:
    """The cached root, made on first use (mmdebstrap reaches Debian's archive, as CI can).
    With `arch`, a foreign root whose packages are only extracted."""
    if os.geteuid() != 0:
        pytest.skip("making and entering a Debian root needs root (chroot, dpkg)")
    key = hashlib.sha256(f"{SUITE}:{arch}:{','.join(include)}".encode()).hexdigest()[:12]
    tarball = CACHE / f"{SUITE}-{arch or 'minbase'}-{key}.tar"
    if tarball.exists():
        return tarball
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (tools/dev installs it)")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = tarball.with_name(f".{tarball.name}.{os.getpid()}")
    result = subprocess.run(
        ["mmdebstrap", f"--variant={'extract' if arch else 'minbase'}", "--mode=root",
         "--format=tar", "--quiet", *([f"--arch={arch}"] if arch else []),
         f"--include={','.join(include)}", SUITE, str(tmp)],
        capture_output=True, text=True, timeout=1200, check=False)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        pytest.fail(f"mmdebstrap failed: {result.stderr[-3000:]}")
    tmp.replace(tarball)
    return tarball


def unpack(tarball: Path, root: Path) -> Path:
    root.mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(root)], check=True, timeout=600)
    hosts = root / "etc/hosts"  # what an installed system has and a bare root lacks
    if not hosts.exists():
        hosts.write_text("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n")
    return root


def chroot(root: Path, *argv: str, user: str | None = None, check: bool = True,
           env: dict[str, str] | None = None, timeout: float = 300
           ) -> subprocess.CompletedProcess[str]:
    command = [CHROOT, *([f"--userspec={user}:{user}"] if user else []), str(root), *argv]
    environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                   "HOME": "/root", **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            check=False, env=environment)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result

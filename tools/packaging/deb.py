"""`python -m tiepdan.tools.packaging.deb`: the box's Debian package, built with dpkg-deb.

`tiepdan-box_<version>_<arch>.deb` carries the target's artifact (tools/packaging/artifact.py)
and installs it as slot a of /opt/tiepdan, creates the `tiepdan` system user (in the gpio,
video, audio and render groups where they exist), /etc/tiepdan and /var/lib/tiepdan, installs
and enables the first-boot and agent units (the agent's ExecStart is the A/B launcher of the
current slot), and limits journald. Purge removes what it created, never recordings the
archive has not signed for. The maintainer scripts are in tools/packaging/debian/.

    python -m tiepdan.tools.packaging.deb dist/linux_aarch64/tiepdan-1.2.0.tar --out dist
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tiepdan.errors import TiepdanError
from tiepdan.firmware.core import logs
from tiepdan.ota.bundle import BundleError, read_bundle
from tiepdan.tools.packaging.artifact import TARGETS

log = logging.getLogger(__name__)

PACKAGE = "tiepdan-box"
HERE = Path(__file__).resolve().parent
UNITS = HERE.parent.parent / "firmware" / "systemd"
SCRIPTS = HERE / "debian"
MAINTAINER = "tiepdan maintainers <tiepdan@localhost>"
# What the package needs from Debian besides the target's interpreter and hardware bindings.
BASE_DEPENDS = ("adduser", "systemd", "init-system-helpers")


class PackageError(TiepdanError, RuntimeError):
    """The package cannot be built; the message says why."""


def control(version: str, arch: str, depends: list[str], recommends: list[str],
            installed_kb: int) -> str:
    lines = [f"Package: {PACKAGE}", f"Version: {version}", f"Architecture: {arch}",
             f"Maintainer: {MAINTAINER}", f"Installed-Size: {installed_kb}",
             f"Depends: {', '.join(depends)}"]
    if recommends:
        lines.append(f"Recommends: {', '.join(recommends)}")
    lines += ["Section: net", "Priority: optional",
              "Description: tiepdan box for online citizen reception in commune halls",
              " The agent of a plug-and-play box (Raspberry Pi): camera, speakerphone,",
              " buttons and LEDs, reception sessions with the central controller,",
              " signed encrypted recordings and A/B over-the-air updates. Slot a of",
              " /opt/tiepdan is installed from the packaged artifact; first boot enrolls",
              " the box with the provisioning folder on its boot partition."]
    return "\n".join(lines) + "\n"


def build(bundle: Path, out: Path) -> Path:
    """Build the .deb for `bundle`'s target into `out`; returns its path."""
    if shutil.which("dpkg-deb") is None:
        raise PackageError("dpkg-deb is not installed (Debian package dpkg)")
    manifest, _ = read_bundle(bundle)
    target = TARGETS.get(manifest.target)
    if target is None:
        raise PackageError(f"{bundle.name} is built for {manifest.target!r}, not a box target "
                           f"({', '.join(TARGETS)}): build it with tools/packaging/artifact.py")
    started = time.monotonic()
    version = manifest.version
    # On Debian, the interpreter and the apt-only bindings; the rest is the slot's.
    depends = [d for d in target.system if d.startswith("python3 ")] + list(BASE_DEPENDS)
    recommends = [d for d in target.system if not d.startswith("python3 ")]
    with tempfile.TemporaryDirectory(prefix="tiepdan-deb-") as tmp:
        stage = Path(tmp) / "stage"
        lib = stage / "usr/lib/tiepdan"
        lib.mkdir(parents=True)
        shutil.copyfile(bundle, lib / bundle.name)
        shutil.copyfile(SCRIPTS / "install-slot", lib / "install-slot")
        (lib / "install-slot").chmod(0o755)
        units = stage / "usr/lib/systemd/system"
        units.mkdir(parents=True)
        for unit in sorted(UNITS.glob("*.service")):
            shutil.copyfile(unit, units / unit.name)
        journald = stage / "usr/lib/systemd/journald.conf.d"
        journald.mkdir(parents=True)
        shutil.copyfile(SCRIPTS / "journald.conf", journald / "tiepdan.conf")
        docs = stage / "usr/share/doc" / PACKAGE
        docs.mkdir(parents=True)
        (docs / "copyright").write_text("tiepdan: Apache-2.0\n")
        # A slot unpacks to a few times the artifact's size; count both slots' worth once.
        installed_kb = (sum(p.stat().st_size for p in stage.rglob("*") if p.is_file()) * 4
                        ) // 1024
        debian = stage / "DEBIAN"
        debian.mkdir()
        (debian / "control").write_text(control(version, target.deb_arch, depends, recommends,
                                                installed_kb))
        for script in ("postinst", "prerm", "postrm"):
            text = (SCRIPTS / script).read_text().replace("@BUNDLE@", bundle.name)
            (debian / script).write_text(text)
            (debian / script).chmod(0o755)
        out.mkdir(parents=True, exist_ok=True)
        deb = out / f"{PACKAGE}_{version}_{target.deb_arch}.deb"
        # The artifact is already compressed wheels: gzip -1 of it is fast and loses little.
        result = subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build",
                                 str(stage), str(deb)], capture_output=True, text=True,
                                check=False)
        if result.returncode != 0:
            raise PackageError(f"dpkg-deb failed: {result.stderr.strip()[-2000:]}")
    log.info("deb_built file=%s bytes=%d seconds=%.1f", deb, deb.stat().st_size,
             time.monotonic() - started)
    return deb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiepdan.tools.packaging.deb",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, help="the artifact (tiepdan-<version>.tar)")
    parser.add_argument("--out", type=Path, default=Path("dist"))
    args = parser.parse_args(argv)
    logs.setup()
    try:
        deb = build(args.bundle, args.out)
    except (BundleError, PackageError) as exc:
        log.error("deb_failed bundle=%s error=%s", args.bundle, exc)
        return 1
    sys.stdout.write(f"{deb}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

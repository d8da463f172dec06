"""Updates of the whole environment (issue 12): a bundle whose dependency changed version
installs into the spare slot with that dependency, runs on it, and commits after its health
check; one whose changed dependency breaks the agent rolls back by itself. Real broker, real
TUF repository over HTTP, the box as its own supervised process; the dependency wheels are
built here (tests never download): tinydb, which the agent imports at start, at a new version.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from tests.ota.harness import RepoServer, job, notify, wait_final
from tests.ota.test_box_process import DEVICE, controller_side, supervised
from tests.support import Observer
from tiepdan.firmware.update import boot
from tiepdan.ota.bundle import build_bundle, read_bundle
from tiepdan.ota.repository import UpdateRepository
from tiepdan.tools.broker import Mosquitto

pytestmark = pytest.mark.timeout(300)

INSTALLED = metadata.version("tinydb")
NEW = f"{INSTALLED}.1"  # a later version than the one the base environment runs


def make_wheel(out: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel (PEP 427): the files, METADATA, WHEEL and RECORD."""
    info = f"{name}-{version}.dist-info"
    members = {**files,
               f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                   .encode(),
               f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tiepdan-tests\n"
                                b"Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{path},sha256={digest(data)},{len(data)}" for path, data in members.items()]
    members[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in members.items():
            archive.writestr(path, data)
    return wheel


def digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def tinydb_files(broken: bool) -> dict[str, bytes]:
    """The installed tinydb's package, as a new release would ship it (or a broken one)."""
    package = Path(str(metadata.distribution("tinydb").locate_file("tinydb")))
    files = {f"tinydb/{p.name}": p.read_bytes() for p in package.glob("*.py")}
    if broken:
        files["tinydb/__init__.py"] = (b"raise ImportError('tinydb " + NEW.encode() +
                                       b" (test build) is broken')\n")
    return files


def bundle_with_tinydb(tmp_path: Path, bundles: dict[str, Path], *, broken: bool) -> Path:
    manifest, wheel_bytes = read_bundle(bundles["good"])
    app = tmp_path / "app" / manifest.wheel
    app.parent.mkdir(parents=True)
    app.write_bytes(wheel_bytes)
    dependency = make_wheel(tmp_path / "deps", "tinydb", NEW, tinydb_files(broken))
    return build_bundle(app, tmp_path / "dist", [dependency], target="any")


async def test_a_changed_dependency_reaches_the_box_and_commits(
        tmp_path: Path, broker: Mosquitto, repo: UpdateRepository, server: RepoServer,
        bundles: dict[str, Path]) -> None:
    bundle = bundle_with_tinydb(tmp_path, bundles, broken=False)
    repo.add_bundle(bundle)
    async with controller_side(broker) as obs, \
            supervised(tmp_path, broker, repo, bundles) as box:
        await notify_job(obs, server)
        result = await wait_final(obs, DEVICE, "j1", 150, box)
        assert result.status == "succeeded", (result, box.output()[-3000:])
        assert result.running == "1.1.0"
        assert box.current() == "b" and boot.read_state(box.root)["committed"] == "b"
        site = box.root / "slots" / "b" / "site"
        assert (site / f"tinydb-{NEW}.dist-info").is_dir()
        assert json.loads((box.root / "slots/b/slot.json").read_text())["dependencies"] == \
            {"tinydb": NEW}
        # The committed slot a is untouched: it still runs on the environment it had.
        assert not list((box.root / "slots" / "a" / "site").glob("tinydb*"))


async def test_a_changed_dependency_that_breaks_the_agent_rolls_back(
        tmp_path: Path, broker: Mosquitto, repo: UpdateRepository, server: RepoServer,
        bundles: dict[str, Path]) -> None:
    bundle = bundle_with_tinydb(tmp_path, bundles, broken=True)
    repo.add_bundle(bundle)
    async with controller_side(broker) as obs, \
            supervised(tmp_path, broker, repo, bundles, health_timeout=10.0) as box:
        await notify_job(obs, server)
        result = await wait_final(obs, DEVICE, "j1", 150, box)
        assert result.status == "rolled_back", (result, box.output()[-3000:])
        assert result.running == "1.0.0"
        assert result.reason is not None and "no health verdict after 2 start(s)" in result.reason
        state = boot.read_state(box.root)
        assert box.current() == "a" and state["committed"] == "a" and state["trial"] is None
        # The new slot did import its own tinydb, and that is what failed.
        assert f"tinydb {NEW} (test build) is broken" in box.output()


async def notify_job(obs: Observer, server: RepoServer) -> None:
    await notify(obs, DEVICE, job("j1", "tiepdan-1.1.0.tar", "1.1.0", server.url))


def test_the_admin_cli_builds_a_box_only_bundle_with_dependency_wheels(tmp_path: Path) -> None:
    from tests.support import ROOT
    from tiepdan.controller.cli.ota import main

    wheels = tmp_path / "wheels"
    make_wheel(wheels, "tinydb", NEW, tinydb_files(broken=False))
    assert main(["build", "--version", "1.5.0", "--source", str(ROOT), "--out",
                 str(tmp_path / "dist"), "--wheels", str(wheels), "--target", "any-test"]) == 0
    manifest, wheel = read_bundle(tmp_path / "dist" / "tiepdan-1.5.0.tar")
    assert [(d.name, d.version) for d in manifest.dependencies] == [("tinydb", NEW)]
    assert manifest.target == "any-test"
    names = zipfile.ZipFile(io.BytesIO(wheel)).namelist()
    assert not any(n.startswith(("tiepdan/controller/", "tiepdan/provisioning/",
                                 "tiepdan/tools/")) for n in names)
    assert main(["build", "--version", "1.5.1", "--source", str(ROOT), "--out",
                 str(tmp_path / "dist"), "--wheels", str(wheels)]) != 0  # which platform?

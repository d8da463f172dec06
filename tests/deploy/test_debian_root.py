"""The box package CI builds, installed into a clean Debian bookworm root (issue 12): its files,
user and units, the installed agent's configuration check, and purge."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.debian_root import CHROOT, chroot, root_tarball, unpack
from tests.provisioning.support import provision
from tests.support import AgentProcess, SecureBroker, eventually, running_controller
from tiepdan.controller.enrollment.provisioning import NewBox
from tiepdan.controller.service import Controller
from tiepdan.firmware import protocol
from tiepdan.firmware.firstboot.enroll import enroll
from tiepdan.firmware.update.boot import slot_version
from tiepdan.ota.repository import Keyring, UpdateRepository
from tiepdan.provisioning.boot import write_boot_folder
from tiepdan.tools.packaging import artifact, deb

pytestmark = pytest.mark.timeout(1200)

UNITS = ("tiepdan-agent.service", "tiepdan-firstboot.service", "tiepdan-updater.service")
# A small composed picture, as tests/sessions use: this is about deployment, not media.
BRIDGE = {"width": 640, "height": 360, "fps": 10, "bitrate": 600_000, "media_timeout": 2.0,
          "connect_timeout": 8.0}
DEVICE = "xa-hung-nguyen"
GUEST = "xa-dien-chau"


@pytest.fixture(scope="module")
def package(box_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return deb.build(box_artifact, tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="module")
def installed(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = unpack(root_tarball(), tmp_path_factory.mktemp("bookworm") / "root")
    shutil.copy(package, root / "tmp" / package.name)
    chroot(root, "dpkg", "-i", f"/tmp/{package.name}")
    return root


def test_the_package_installs_slot_a_the_user_and_the_units(installed: Path) -> None:
    opt = installed / "opt/tiepdan"
    assert os.readlink(opt / "current") == "slots/a"
    assert json.loads((opt / "boot.json").read_text())["committed"] == "a"
    for program in ("bin/tiepdan-agent", "bin/tiepdan-enroll"):
        assert os.access(opt / "slots/a" / program, os.X_OK), program
    assert chroot(installed, "/opt/tiepdan/current/bin/tiepdan-agent", "--version"
                  ).stdout.strip() == "tiepdan 1.0.0"
    user = chroot(installed, "getent", "passwd", "tiepdan").stdout.split(":")
    assert user[5] == "/var/lib/tiepdan" and user[6].strip() in ("/usr/sbin/nologin",
                                                                  "/bin/false")
    groups = chroot(installed, "id", "-nG", "tiepdan").stdout.split()
    assert {"tiepdan", "video", "audio"} <= set(groups)  # gpio and render only exist on a Pi
    uid = int(user[2])
    state = (installed / "var/lib/tiepdan").stat()
    assert (state.st_uid, state.st_mode & 0o777) == (uid, 0o700)
    # The slots are root's and no one else may write them: the agent only reads and runs
    # them, the updater (root) installs updates.
    for path in (opt, opt / "slots", opt / "slots/a", opt / "slots/a/site", opt / "boot.json",
                 opt / "slots/a/site/tiepdan/__init__.py", opt / "slots/a/bin/tiepdan-agent"):
        info = path.lstat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o022) == (0, 0, 0), path
    denied = chroot(installed, "sh", "-c", "echo owned >> /opt/tiepdan/slots/a/slot.json",
                    user="tiepdan", check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert (installed / "var/lib/tiepdan-updater").stat().st_mode & 0o777 == 0o700
    assert (installed / "etc/tiepdan").is_dir()
    wants = installed / "etc/systemd/system/multi-user.target.wants"
    for unit in UNITS:
        assert (wants / unit).is_symlink(), f"{unit} is not enabled"
    journald = (installed / "usr/lib/systemd/journald.conf.d/tiepdan.conf").read_text()
    assert "SystemMaxUse=" in journald and "Storage=persistent" in journald


def test_systemd_verifies_the_installed_units(installed: Path) -> None:
    """Against the installed files: a unit whose command is missing fails here."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run([analyze, "verify", f"--root={installed}", *UNITS],
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    broken = installed / "etc/systemd/system/tiepdan-broken.service"
    broken.write_text((installed / "usr/lib/systemd/system/tiepdan-firstboot.service")
                      .read_text().replace("current/bin/", "current/venv/bin/"))
    try:
        result = subprocess.run([analyze, "verify", f"--root={installed}", broken.name],
                                capture_output=True, text=True, check=False, timeout=120)
        assert "current/venv/bin/tiepdan-enroll is not executable" in result.stderr
    finally:
        broken.unlink()


def test_the_installed_agent_checks_its_configuration(installed: Path) -> None:
    config = installed / "etc/tiepdan/check.toml"
    config.write_text('[device]\nid = "xa-check"\nname = "UBND xã"\n')
    try:
        ok = chroot(installed, "/opt/tiepdan/current/bin/tiepdan-agent", "--check-config",
                    "--config", "/etc/tiepdan/check.toml", user="tiepdan")
        assert "config_ok" in ok.stderr + ok.stdout
        config.write_text('[device]\nid = "xa-check"\nname = "n"\n[mqtt]\nport = 70000\n')
        bad = chroot(installed, "/opt/tiepdan/current/bin/tiepdan-agent", "--check-config",
                     "--config", "/etc/tiepdan/check.toml", user="tiepdan", check=False)
        assert bad.returncode == 2 and "mqtt.port" in bad.stderr
    finally:
        config.unlink()


@contextlib.contextmanager
def mounted_proc(root: Path) -> Iterator[None]:
    """/proc inside the root, as systemd would give the agent (psutil reads it)."""
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False)


def unit_commands(root: Path, unit: str) -> dict[str, list[str]]:
    text = (root / "usr/lib/systemd/system" / unit).read_text()
    return {key: shlex.split(value) for key, _, value in
            (line.partition("=") for line in text.splitlines())
            if key in ("ExecStart", "ExecStartPost")}


async def test_first_boot_in_the_root_enrolls_and_records_a_session_that_closes(
        installed: Path, secure_broker: SecureBroker, tmp_path: Path) -> None:
    """As a technician sets a box up: SD-card folder, first boot, agent; nothing edited by hand.
    The box in the root hosts a session with a second box (the agent from this checkout); the
    session closes only once both boxes' recordings and the bridge's are archived."""
    config = secure_broker.controller_config(
        bridge=BRIDGE, sessions={"invite_timeout": 10.0},
        archive={"close_interval": 0.5, "segment_seconds": 1.0})
    UpdateRepository(config.ota_repository_path, Keyring()).initialise(
        tmp_path / "keys", [tmp_path / "offline-1", tmp_path / "offline-2"], root_keys=3,
        root_threshold=2)
    async with running_controller(config) as controller:
        await eventually(lambda: controller.provisioning.enrollment.port, what="enrollment")
        token, box = controller.provisioning.new_box(
            NewBox(commune="hung-nguyen", hall="UBND xã Hưng Nguyên", device=DEVICE))
        write_boot_folder(installed / "boot/firmware", controller.provisioning.provision_file(box),
                          controller.provisioning.authority().pem, token)
        firstboot = unit_commands(installed, "tiepdan-firstboot.service")
        enrolled = await asyncio.to_thread(chroot, installed, *firstboot["ExecStart"])
        await asyncio.to_thread(chroot, installed, *firstboot["ExecStartPost"])
        assert "enroll_done" in enrolled.stderr + enrolled.stdout
        assert not (installed / "boot/firmware/tiepdan/claim.token").exists()
        written = tomllib.loads((installed / "etc/tiepdan/agent.toml").read_text())
        assert written["recording"]["archive_url"] == controller.boxes.url
        assert written["device"]["id"] == DEVICE
        assert written["ota"]["repository"] == f"{controller.boxes.url}/ota"
        assert (installed / "etc/tiepdan/ota-root.json").read_bytes() == \
            UpdateRepository(config.ota_repository_path).trusted_root()
        check = await asyncio.to_thread(
            chroot, installed, "/opt/tiepdan/current/bin/tiepdan-agent", "--check-config",
            "--config", "/etc/tiepdan/agent.toml", user="tiepdan")
        assert "config_ok" in check.stderr + check.stdout

        guest_paths = provision(controller, tmp_path, GUEST)
        await enroll(guest_paths)
        guest = AgentProcess(guest_paths.agent_config)
        agent_argv = unit_commands(installed, "tiepdan-agent.service")["ExecStart"]
        (installed / "run/tiepdan").mkdir(parents=True, exist_ok=True)
        shutil.chown(installed / "run/tiepdan", "root", "root")
        log = (tmp_path / "box.log").open("wb")
        with mounted_proc(installed):
            # The agent unit's own command, as its user; only the hardware is simulated.
            inside = await asyncio.to_thread(
                subprocess.Popen,
                [CHROOT, "--userspec=tiepdan:tiepdan", str(installed), *agent_argv],
                stdout=log, stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/var/lib/tiepdan",
                     "TIEPDAN_BOARD": "sim"})
            guest.start()
            try:
                await eventually(lambda: all((d := controller.registry.get(n)) and d.online
                                             for n in (DEVICE, GUEST)), 60,
                                 what="both boxes ready at the controller")
                session = await controller.sessions.open(DEVICE, [GUEST], auto_join=True,
                                                         title="first boot (issue 12)")
                await eventually(lambda: _joined(controller, session.id) == 2, 60,
                                 what="both points live")
                await eventually(lambda: len(controller.archive.receipts(session.id, DEVICE))
                                 >= 2, 60, what="the box's segments in the archive")
                await controller.sessions.end(session.id, "test")
                await eventually(lambda: _state(controller, session.id) == "closed", 120,
                                 what="the session closed (every recording archived)")
            finally:
                inside.terminate()
                try:
                    await asyncio.to_thread(inside.wait, 20)
                except subprocess.TimeoutExpired:
                    inside.kill()
                    await asyncio.to_thread(inside.wait)
                guest.terminate()
                log.close()
        output = (tmp_path / "box.log").read_text(errors="replace")
        assert "Traceback" not in output, output[-3000:]
        recordings = {r["recorder"] for r in controller.archive.recordings(session.id)}
        assert {DEVICE, GUEST} <= recordings, recordings
    # Nothing was edited by hand: the agent's configuration is enrollment's, byte for byte.
    assert tomllib.loads((installed / "etc/tiepdan/agent.toml").read_text()) == written


def _joined(controller: Controller, session: str) -> int:
    return sum(1 for p in controller.sessions.points(session) if p.state == "live")


def _state(controller: Controller, session: str) -> str:
    found = controller.sessions.get(session)
    return "" if found is None else found.state


def test_purge_removes_what_it_created_but_never_unarchived_recordings(
        installed: Path, package: Path) -> None:
    """Runs last: it removes the package from the root the other tests share."""
    recordings = installed / "var/lib/tiepdan/recordings"
    archived, pending = recordings / "s-archived", recordings / "s-pending"
    for session in (archived, pending):
        session.mkdir(parents=True, exist_ok=True)
        (session / "000000.mkv.age").write_bytes(b"sealed")
        (session / "000001.mkv.age").write_bytes(b"sealed")
    (archived / "receipts.jsonl").write_text('{"name":"000000.mkv.age"}\n'
                                             '{"name":"000001.mkv.age"}\n')
    (pending / "receipts.jsonl").write_text('{"name":"000000.mkv.age"}\n')  # 000001 is not
    (installed / "var/lib/tiepdan/tls").mkdir(exist_ok=True)
    chroot(installed, "dpkg", "--purge", "tiepdan-box")
    assert not (installed / "opt/tiepdan").exists()
    assert not (installed / "var/lib/tiepdan-updater").exists()
    assert not (installed / "etc/tiepdan").exists()
    assert not (installed / "usr/lib/systemd/system/tiepdan-agent.service").exists()
    assert not (installed / "etc/systemd/system/multi-user.target.wants/tiepdan-agent.service"
                ).exists()
    assert (pending / "000001.mkv.age").read_bytes() == b"sealed"
    assert not archived.exists()
    assert (installed / "var/lib/tiepdan/tls").is_dir()  # to upload them after a reinstall
    assert chroot(installed, "getent", "passwd", "tiepdan").returncode == 0
    # Once nothing is left to archive, purge takes the rest and the user.
    shutil.rmtree(pending)
    chroot(installed, "dpkg", "-i", f"/tmp/{package.name}")
    chroot(installed, "dpkg", "--purge", "tiepdan-box")
    assert not (installed / "var/lib/tiepdan").exists()
    assert chroot(installed, "getent", "passwd", "tiepdan", check=False).returncode == 2


def _committed(root: Path) -> tuple[str, str | None]:
    try:
        state = json.loads((root / "opt/tiepdan/boot.json").read_text())
    except (OSError, ValueError):
        return "", None
    committed = str(state.get("committed"))
    return committed, slot_version(root / "opt/tiepdan", committed)


def _container_init(nspawn: subprocess.Popen[bytes]) -> int | None:
    """The container's PID 1 (systemd), as seen from here: nspawn's child."""
    try:
        children = Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _show(init: int, unit: str) -> dict[str, str]:
    result = subprocess.run(
        ["nsenter", "-t", str(init), "-m", "-u", "-i", "-p", "systemctl", "show", unit,
         "-p", "ActiveState,SubState,Result,WatchdogUSec,User,MainPID,NRestarts"],
        capture_output=True, text=True, timeout=30, check=False)
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


async def test_first_boot_under_systemd_in_nspawn_reaches_ready(
        package: Path, secure_broker: SecureBroker, tmp_path: Path) -> None:
    """The root booted by systemd (systemd-nspawn, sharing this host's network): the enabled
    first-boot unit enrolls, the agent unit starts as its user and only becomes active once it
    sent READY=1, with its watchdog armed; then the box takes an update of its whole
    environment from the repository and root enrollment gave it, systemd restarts it into the
    new slot and it commits. Skipped where systemd-nspawn cannot boot."""
    nspawn_bin = shutil.which("systemd-nspawn")
    if nspawn_bin is None or shutil.which("nsenter") is None:
        pytest.skip("systemd-nspawn (systemd-container) is not installed")
    root = unpack(root_tarball(), tmp_path / "root")
    shutil.copy(package, root / "tmp" / package.name)
    chroot(root, "dpkg", "-i", f"/tmp/{package.name}")
    # The only addition: the board is simulated (no camera, GPIO or sound card here).
    dropin = root / "etc/systemd/system/tiepdan-agent.service.d"
    dropin.mkdir(parents=True)
    (dropin / "simulated-board.conf").write_text("[Service]\nEnvironment=TIEPDAN_BOARD=sim\n")
    config = secure_broker.controller_config()
    repository = UpdateRepository(config.ota_repository_path, Keyring())
    repository.initialise(tmp_path / "keys", [tmp_path / "offline-1", tmp_path / "offline-2"],
                          root_keys=3, root_threshold=2)
    update = await asyncio.to_thread(artifact.build, artifact.host_target(), "1.0.1",
                                     tmp_path / "dist", offline=True)
    async with running_controller(config) as controller:
        await eventually(lambda: controller.provisioning.enrollment.port, what="enrollment")
        token, box = controller.provisioning.new_box(
            NewBox(commune="hung-nguyen", hall="UBND xã Hưng Nguyên", device=DEVICE))
        write_boot_folder(root / "boot/firmware", controller.provisioning.provision_file(box),
                          controller.provisioning.authority().pem, token)
        log = (tmp_path / "nspawn.log").open("wb")
        nspawn = await asyncio.to_thread(
            subprocess.Popen, [nspawn_bin, "-q", "-D", str(root), "--boot", "--keep-unit",
                               "--register=no"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            try:
                await eventually(lambda: (d := controller.registry.get(DEVICE)) and d.online,
                                 120, what="the box online after a systemd boot")
            except AssertionError:
                output = (tmp_path / "nspawn.log").read_text(errors="replace")
                if "multi-user.target" not in output:
                    pytest.skip(f"systemd-nspawn cannot boot here: {output[-1500:]}")
                raise
            init = _container_init(nspawn)
            assert init is not None
            firstboot = _show(init, "tiepdan-firstboot.service")
            agent = _show(init, "tiepdan-agent.service")
            updater = _show(init, "tiepdan-updater.service")
            assert firstboot["Result"] == "success", firstboot
            assert (updater["ActiveState"], updater["SubState"]) == ("active", "running"), \
                updater
            assert (agent["ActiveState"], agent["SubState"]) == ("active", "running"), agent
            assert agent["User"] == "tiepdan" and agent["WatchdogUSec"] == "30s", agent
            assert agent["NRestarts"] == "0", agent

            # An update of the whole environment, as a campaign would notify it. The box has no
            # timesyncd in this root: say the clock is synchronised, as timesyncd would.
            await asyncio.to_thread(repository.add_bundle, update)
            await asyncio.to_thread(
                subprocess.run, ["nsenter", "-t", str(init), "-m", "sh", "-c",
                                 "mkdir -p /run/systemd/timesync && "
                                 "touch /run/systemd/timesync/synchronized"],
                check=True, timeout=30)
            document = protocol.JobDocument(job="j1", target="tiepdan-1.0.1.tar", version="1.0.1",
                                            repository=f"{controller.boxes.url}/ota")
            await controller.link.publish(
                protocol.job_notify_topic(DEVICE),
                protocol.encode(protocol.JobNotify(ts=protocol.now_ms(), job=document)),
                qos=1, retain=True)
            await eventually(lambda: _committed(root) == ("b", "1.0.1"), 400,
                             what="slot b committed on 1.0.1 after systemd restarted the agent")
            await eventually(lambda: (d := controller.registry.get(DEVICE)) and
                             d.firmware == "1.0.1" and d.online, 60,
                             what="the box back online on 1.0.1")
            agent = _show(init, "tiepdan-agent.service")
            journal = await asyncio.to_thread(
                subprocess.run, ["nsenter", "-t", str(init), "-m", "-p", "journalctl", "-b",
                                 "-o", "short-monotonic", "--no-pager", "-n", "80"],
                capture_output=True, text=True, timeout=30, check=False)
            # Re-executed in place (same PID, no restart), and active again: READY=1 from the
            # new code ended the reload its old code announced.
            assert (agent["ActiveState"], agent["SubState"]) == ("active", "running"), \
                (agent, journal.stdout[-6000:])
            assert agent["NRestarts"] == "0", agent
            assert json.loads((root / "opt/tiepdan/slots/b/slot.json").read_text())[
                "dependencies"], "the update carried its dependencies"
            # The updater fetched, verified and installed it, as root; the agent (read-only
            # /opt/tiepdan) only asked.
            assert list((root / "var/lib/tiepdan-updater/bundles").iterdir())
            assert not (root / "var/lib/tiepdan/ota").exists()
            slot_b = (root / "opt/tiepdan/slots/b/site").stat()
            assert (slot_b.st_uid, slot_b.st_mode & 0o022) == (0, 0)
        finally:
            nspawn.terminate()  # the container halts as on a power button
            try:
                await asyncio.to_thread(nspawn.wait, 60)
            except subprocess.TimeoutExpired:
                nspawn.kill()
                await asyncio.to_thread(nspawn.wait)
            log.close()

"""Revoking a lost or stolen box: refused from then on, its live connection cut, its signatures
untrusted from that moment; nobody else restarted or disturbed."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.provisioning.support import agent_config, provision
from tests.support import SecureBroker, eventually, running_agent, running_controller
from tiepdan.controller.enrollment.provisioning import NewBox
from tiepdan.firmware.firstboot.enroll import EnrollError, enroll
from tiepdan.provisioning.ca import CertificateAuthority


async def test_a_revoked_box_is_cut_off_at_once_and_nobody_else_is_disturbed(
        secure_broker: SecureBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with running_controller(secure_broker.controller_config()) as controller:
        await eventually(lambda: controller.provisioning.enrollment.port)
        a, b = provision(controller, tmp_path, "xa-a"), provision(controller, tmp_path, "xa-b")
        serial_a = (await enroll(a)).serial
        await enroll(b)
        async with running_agent(agent_config(a)) as box_a, \
                running_agent(agent_config(b)) as box_b:
            for device in ("xa-a", "xa-b"):
                await eventually(lambda d=device: (x := controller.registry.get(d)) and x.online,
                                 what=f"{device} online")
            broker_pid = secure_broker.broker.process.pid if secure_broker.broker.process \
                else None
            before = time.time()
            with caplog.at_level(logging.INFO):
                result = await controller.provisioning.revoke("xa-a", "stolen from the hall")
            assert result.broker_refuses and result.evicted
            assert result.serials == [serial_a]

            await eventually(lambda: not box_a.agent.link.connected, what="xa-a cut off")
            assert "Client xa-a already connected, closing old connection" in secure_broker.log()
            await eventually(lambda: (d := controller.registry.get("xa-a")) and not d.online,
                             what="the controller sees xa-a lost")
            connects = box_a.agent.link.connects
            await asyncio.sleep(2.5)  # several reconnect attempts (reconnect_max is 1 s)
            assert box_a.agent.link.connects == connects, "a revoked box got back in"
            assert secure_broker.log().count("certificate verify failed") >= 2
            assert "mqtt_client_error client=xa-a" in caplog.text
            assert "CERTIFICATE_REVOKED" in caplog.text, "the box says why it is refused"

            assert box_b.agent.link.connected and box_b.agent.link.connects == 1
            assert controller.link.connects == 1
            assert (await controller.rpc.request("xa-b", "ping", timeout=10)).ok
            assert secure_broker.broker.process is not None
            assert secure_broker.broker.process.pid == broker_pid, "the broker was restarted"

        identity = controller.identities.get("xa-a")
        assert identity is not None and identity.revoked_at is not None
        assert identity.trusted_at(before - 1) and not identity.trusted_at(time.time())
        crl = x509.load_pem_x509_crl(secure_broker.material.broker.crl.read_bytes())
        assert crl.get_revoked_certificate_by_serial_number(int(serial_a, 16)) is not None
        assert "user xa-a\ntopic deny #" in secure_broker.material.broker.acl.read_text()
        assert "device_revoked device=xa-a" in caplog.text
        box = controller.provisioning.claims.get("xa-a")
        assert box is not None and box.state() == "revoked"


async def test_revocation_survives_broker_and_controller_restarts(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    config = secure_broker.controller_config()
    async with running_controller(config) as controller:
        await eventually(lambda: controller.provisioning.enrollment.port)
        a = provision(controller, tmp_path, "xa-a")
        await enroll(a)
        await controller.provisioning.revoke("xa-a", "lost")
    secure_broker.broker.restart()
    async with running_controller(config) as controller, \
            running_agent(agent_config(a), connect=False) as box_a:
        await asyncio.sleep(2.5)
        assert box_a.agent.link.connects == 0
        assert controller.link.connected


async def test_a_box_revoked_before_its_first_boot_cannot_enroll(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    async with running_controller(secure_broker.controller_config()) as controller:
        await eventually(lambda: controller.provisioning.enrollment.port)
        a = provision(controller, tmp_path, "xa-a")
        await controller.provisioning.revoke("xa-a", "SD card lost in transit")
        with pytest.raises(EnrollError) as refused:
            await enroll(a)
        assert refused.value.code == "revoked"
        with pytest.raises(Exception, match="revoked"):
            controller.provisioning.new_box(NewBox(commune="x", hall="h", device="xa-a"))


async def test_the_crl_is_re_signed_long_before_it_expires(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    async with running_controller(secure_broker.controller_config()) as controller:
        await eventually(lambda: controller.provisioning.enrollment.port)
        provisioning = controller.provisioning
        a = provision(controller, tmp_path, "xa-a")
        serial = int((await enroll(a)).serial, 16)
        await provisioning.revoke("xa-a", "lost")
        assert not provisioning.crl_due()
        ca = CertificateAuthority.load(provisioning.material.ca_key,
                                       provisioning.material.ca_cert)
        from cryptography.hazmat.primitives.serialization import Encoding

        provisioning.material.broker.crl.write_bytes(
            ca.crl([], 0.5).public_bytes(Encoding.PEM))
        assert provisioning.crl_due()
        await provisioning.sync_broker("test")
        assert not provisioning.crl_due()
        crl = x509.load_pem_x509_crl(provisioning.material.broker.crl.read_bytes())
        assert crl.get_revoked_certificate_by_serial_number(serial) is not None
        assert crl.next_update_utc is not None
        settings = provisioning.settings
        left = crl.next_update_utc - dt.datetime.now(dt.UTC)
        assert dt.timedelta(days=settings.crl_days) - left < dt.timedelta(minutes=1)
        # Refreshed within hours, not when half of a long life has gone.
        hours = dt.timedelta(hours=settings.crl_refresh_hours)
        now = dt.datetime.now(dt.UTC)
        assert not provisioning.crl_due(now + hours - dt.timedelta(minutes=1))
        assert provisioning.crl_due(now + hours + dt.timedelta(minutes=1))
        assert settings.crl_refresh_hours < 24 * settings.crl_days / 2

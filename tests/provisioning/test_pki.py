"""The two-tier CA over years: an offline root rotates the online issuing CA while the fleet
keeps working, against the real controller, Mosquitto and agents."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.provisioning.support import agent_config, provision
from tests.provisioning.test_renewal import DAY, fast_renewal
from tests.support import SecureBroker, eventually, running_agent, running_controller
from tiepdan.firmware.core.mqtt import TlsSettings
from tiepdan.firmware.firstboot.enroll import enroll
from tiepdan.provisioning.ca import CertificateAuthority
from tiepdan.provisioning.material import central_due, rotate


def issuer(path: Path) -> x509.Name:
    return x509.load_pem_x509_certificate(path.read_bytes()).issuer


def test_the_root_key_opens_only_with_its_passphrase(secure_broker: SecureBroker) -> None:
    material = secure_broker.material
    with pytest.raises(ValueError):
        CertificateAuthority.load(secure_broker.root_key, material.root_cert)
    with pytest.raises(ValueError):
        CertificateAuthority.load(secure_broker.root_key, material.root_cert, b"wrong guess!!")
    root = CertificateAuthority.load(secure_broker.root_key, material.root_cert,
                                     secure_broker.passphrase)
    assert root.is_root and not material.authority().is_root
    with pytest.raises(ValueError, match="only the root"):
        material.authority().issue_authority("a CA the issuing CA may not make")
    assert material.authority().chain == [root.cert]


async def test_a_rotation_keeps_old_boxes_working_and_new_ones_join(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    material = secure_broker.material
    async with running_controller(secure_broker.controller_config()) as controller:
        provisioning = controller.provisioning
        await eventually(lambda: provisioning.renewal.port, timeout=30, what="renewal site")
        old_ca = provisioning.authority()
        a = provision(controller, tmp_path, "xa-a")
        await enroll(a)
        fast_renewal(a)
        assert issuer(a.cert) == old_ca.cert.subject
        async with running_agent(agent_config(a)) as box_a:
            root = CertificateAuthority.load(secure_broker.root_key, material.root_cert,
                                             secure_broker.passphrase)
            new_ca = rotate(material, root, controller="central", cert_days=30)
            assert new_ca.cert.subject != old_ca.cert.subject  # CRLs are found by name
            await provisioning.sync_broker("rotate")
            # Mosquitto rereads certificates and CRLs on SIGHUP but not its CA file: once.
            connects = box_a.agent.link.connects
            secure_broker.broker.restart()
            await eventually(lambda: box_a.agent.link.connects > connects
                             and box_a.agent.link.connected, timeout=30,
                             what="the box certified by the old issuing CA, back")

            b = provision(controller, tmp_path, "xa-b")
            await enroll(b)
            assert issuer(b.cert) == new_ca.cert.subject, "new boxes get the new CA"
            async with running_agent(agent_config(b)) as box_b:
                assert box_b.agent.link.connected

                # The old box renews into the new CA and reconnects on it.
                renewal = box_a.agent.renewal
                renewal.clock = lambda: time.time() + 300 * DAY
                await eventually(lambda: renewal.renewals >= 1, timeout=30, what="the renewal")
                renewal.clock = time.time
                assert issuer(a.cert) == new_ca.cert.subject
                connects = box_a.agent.link.connects
                secure_broker.broker.restart()
                await eventually(lambda: box_a.agent.link.connects > connects
                                 and box_a.agent.link.connected, timeout=30,
                                 what="the renewed box back on the new CA")

                # Revocation covers certificates of both issuing CAs: one CRL from each.
                result = await provisioning.revoke("xa-a", "stolen")
                assert len(result.serials) == 2 and result.evicted
                marker = b"-----BEGIN X509 CRL-----"
                crls = [x509.load_pem_x509_crl(marker + part) for part in
                        material.broker.crl.read_bytes().split(marker)[1:]]
                assert {c.issuer for c in crls} == {old_ca.cert.subject, new_ca.cert.subject}
                for crl in crls:
                    for serial in result.serials:
                        assert crl.get_revoked_certificate_by_serial_number(
                            int(serial, 16)) is not None
                await eventually(lambda: not box_a.agent.link.connected, what="A cut off")
                with pytest.raises(TimeoutError):  # refused: "certificate revoked"
                    await box_a.agent.link.wait_connected(2)
                assert box_b.agent.link.connected


def served_serial(port: int, ca_file: Path, tls: TlsSettings | None = None) -> int:
    """The serial of the certificate a TLS server on loopback presents now."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if tls is not None and tls.cert_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_central_certificates_are_renewed_in_place_before_they_expire(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    """The broker's, the HTTPS sites' and the controller's certificates (30 days here) are
    renewed by the controller when a third is left, and used without restarting anything."""
    material = secure_broker.material
    async with running_controller(secure_broker.controller_config()) as controller:
        provisioning = controller.provisioning
        await eventually(lambda: provisioning.renewal.port, timeout=30, what="renewal site")
        now = dt.datetime.now(dt.UTC)
        assert central_due(material, now) == []
        assert central_due(material, now + dt.timedelta(days=25)) == [
            material.broker.cert, material.enroll_cert, material.controller_cert]
        old = {p: x509.load_pem_x509_certificate(p.read_bytes())
               for p in (material.broker.cert, material.enroll_cert, material.controller_cert)}
        probe = secure_broker.issue("probe", tmp_path / "probe")
        assert await asyncio.to_thread(served_serial, secure_broker.port, material.broker.ca,
                                       probe) == old[material.broker.cert].serial_number

        await provisioning.renew_central("test")
        new = {p: x509.load_pem_x509_certificate(p.read_bytes()) for p in old}
        assert all(new[p].serial_number != old[p].serial_number for p in old)
        assert central_due(material, dt.datetime.now(dt.UTC)) == []

        async def broker_serves_the_new_one() -> bool:
            served = await asyncio.to_thread(served_serial, secure_broker.port,
                                             material.broker.ca, probe)
            return served == new[material.broker.cert].serial_number

        await eventually(broker_serves_the_new_one,
                         what="the broker serving its new certificate (SIGHUP)")
        for port in (provisioning.enrollment.port, provisioning.renewal.port):
            assert port is not None  # the sites run on this loop: handshake from a thread
            assert await asyncio.to_thread(served_serial, port, material.broker.ca, probe) == \
                new[material.enroll_cert].serial_number

        # Only the controller's new client certificate can bring it back after a restart.
        with controller.db.transaction():
            provisioning.claims.add_revoked_certificate(
                f"{old[material.controller_cert].serial_number:x}", device="controller-central",
                reason="test: superseded", at=time.time(),
                not_after=old[material.controller_cert].not_valid_after_utc.timestamp())
        await provisioning.sync_broker("test")
        connects = controller.link.connects
        secure_broker.broker.restart()
        await eventually(lambda: controller.link.connects > connects and controller.link.connected,
                         timeout=30, what="the controller back on its renewed certificate")

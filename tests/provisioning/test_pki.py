"""The two-tier CA over years: an offline root rotates the online issuing CA while the fleet
keeps working, against the real controller, Mosquitto and agents."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.provisioning.support import agent_config, provision
from tests.provisioning.test_renewal import DAY, fast_renewal
from tests.support import SecureBroker, eventually, running_agent, running_controller
from tiepdan.firmware.firstboot.enroll import enroll
from tiepdan.provisioning.ca import CertificateAuthority
from tiepdan.provisioning.material import rotate


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
        await eventually(lambda: provisioning.renewal.port, what="renewal site")
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
                await eventually(lambda: renewal.renewals >= 1, what="the renewal")
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

"""Certificates for years of service: a box renews its certificate over mutual TLS.

The real controller (its renewal site), a real Mosquitto with provisioning's listener and CRL,
and the real agent. The test moves the box's clock instead of waiting most of a year.
"""

from __future__ import annotations

import ssl
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.provisioning.support import agent_config, provision, refusal_code
from tests.support import SecureBroker, eventually, running_agent, running_controller
from tiepdan.controller.service import Controller
from tiepdan.firmware.firstboot.enroll import Paths, enroll, make_csr, tls_key
from tiepdan.firmware.renewal.renewer import due
from tiepdan.provisioning.ca import new_key

DAY = 86400.0


@pytest.fixture
async def controller(secure_broker: SecureBroker) -> AsyncIterator[Controller]:
    async with running_controller(secure_broker.controller_config()) as c:
        await eventually(lambda: c.provisioning.renewal.port, timeout=30, what="renewal site")
        yield c


def fast_renewal(paths: Paths) -> None:
    settings = tomllib.loads(paths.agent_config.read_text())
    settings["renewal"].update(check_interval=0.1, retry_min=0.1, retry_max=0.5)
    paths.agent_config.write_text(tomli_w.dumps(settings))


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


async def post_renew(controller: Controller, paths: Paths, body: dict[str, Any] | bytes, *,
                     client_cert: bool = True) -> tuple[int, dict[str, Any]]:
    context = ssl.create_default_context(cadata=controller.provisioning.authority().pem.decode())
    if client_cert:
        context.load_cert_chain(str(paths.cert), str(paths.key))
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    async with aiohttp.ClientSession() as session, session.post(
            controller.provisioning.renew_url, data=data, ssl=context) as reply:
        return reply.status, await reply.json(content_type=None)


async def test_a_box_renews_before_expiry_and_stays_connected(
        controller: Controller, secure_broker: SecureBroker, tmp_path: Path) -> None:
    paths = provision(controller, tmp_path, "xa-a")
    await enroll(paths)
    config = agent_config(paths)
    assert config.renewal.url == controller.provisioning.renew_url
    fast_renewal(paths)
    old = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    lifetime = old.not_valid_after_utc - old.not_valid_before_utc
    assert lifetime.days <= 366, "a box certificate lives at most a year"
    async with running_agent(agent_config(paths)) as box:
        link, renewal = box.agent.link, box.agent.renewal
        await eventually(lambda: renewal.checks >= 3, timeout=30, what="a few renewal checks")
        assert renewal.renewals == 0, "a fresh certificate is not renewed"
        connects = link.connects

        # 300 days on: 65 of 365 days left, less than a third.
        renewal.clock = lambda: time.time() + 300 * DAY
        await eventually(lambda: renewal.renewals >= 1, timeout=30, what="the renewal")
        renewal.clock = time.time
        new = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        assert new.serial_number != old.serial_number
        assert spki(new) == spki(old), "renewal keeps the box's key"
        assert new.not_valid_after_utc >= old.not_valid_after_utc
        assert not due(new, time.time(), config.renewal.renew_fraction)
        record = controller.provisioning.claims.get("xa-a")
        assert record is not None and record.cert_serial == f"{new.serial_number:x}"
        assert link.connected and link.connects == connects, "the live connection stayed"

        # Only the new certificate can bring the box back: revoke the old one, restart the
        # broker so every connection has to be made again.
        provisioning = controller.provisioning
        with controller.db.transaction():
            provisioning.claims.add_revoked_certificate(
                f"{old.serial_number:x}", device="xa-a", reason="test: superseded",
                not_after=old.not_valid_after_utc.timestamp(), at=time.time())
        await provisioning.sync_broker("test")
        secure_broker.broker.restart()
        await eventually(lambda: link.connects > connects and link.connected, timeout=30,
                         what="the box back on its renewed certificate")
        response = await controller.rpc.request("xa-a", "ping", timeout=10)
        assert response.ok

        # Revoking the box revokes both certificates it was given.
        result = await provisioning.revoke("xa-a", "stolen")
        assert set(result.serials) >= {f"{old.serial_number:x}", f"{new.serial_number:x}"}


async def test_renewal_refuses_what_enrollment_would_not_grant(
        controller: Controller, tmp_path: Path) -> None:
    a, b = provision(controller, tmp_path, "xa-a"), provision(controller, tmp_path, "xa-b")
    await enroll(a)
    await enroll(b)
    key = tls_key(a.key)
    good = {"csr": make_csr(key, "xa-a")}
    attempts = [
        ({"csr": make_csr(key, "xa-b")}, 403, "forged_subject"),  # another box's id
        ({"csr": make_csr(new_key(), "xa-a")}, 403, "wrong_key"),  # a key it never enrolled
        ({"csr": "not a csr"}, 400, "malformed_csr"),
        ({"csr": good["csr"], "extra": 1}, 400, "bad_request"),
    ]
    for body, status, code in attempts:
        got, answer = await post_renew(controller, a, body)
        assert (got, refusal_code(answer)) == (status, code), body
    with pytest.raises(aiohttp.ClientError):  # no certificate: the handshake itself fails
        await post_renew(controller, a, good, client_cert=False)
    await controller.provisioning.revoke("xa-b", "stolen")
    got, answer = await post_renew(controller, b, {"csr": make_csr(tls_key(b.key), "xa-b")})
    assert (got, refusal_code(answer)) == (403, "revoked")
    assert (await post_renew(controller, a, good))[0] == 200

"""Enrollment end to end: SD card -> first boot -> certificate -> the agent on mutual TLS.

Every test runs the real controller (its HTTPS enrollment site and admin API), a real Mosquitto
configured by provisioning's writer, and the box's own `enroll()`. Each attack in the issue is
its own test, refused with a clear log line.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_fuzz import LoopThread
from tests.provisioning.support import (
    agent_config,
    post_enroll,
    provision,
    refusal_code,
    request_for,
    token_of,
)
from tests.support import (
    SecureBroker,
    eventually,
    make_controller_config,
    running_agent,
    running_controller,
)
from tiepdan.controller.enrollment.provisioning import NewBox, Unavailable
from tiepdan.controller.service import Controller
from tiepdan.firmware.evidence.identity import Identity
from tiepdan.firmware.firstboot.enroll import EnrollError, Paths, enroll, make_csr, tls_key
from tiepdan.provisioning import dynsec
from tiepdan.provisioning.ca import CertificateAuthority
from tiepdan.provisioning.claims import ClaimRefused
from tiepdan.tools.broker import Mosquitto, free_port


@pytest.fixture
async def controller(secure_broker: SecureBroker) -> AsyncIterator[Controller]:
    async with running_controller(secure_broker.controller_config()) as c:
        await eventually(lambda: c.provisioning.enrollment.port, what="enrollment site")
        yield c


async def test_a_box_enrolls_on_first_boot_and_connects_over_mutual_tls(
        controller: Controller, tmp_path: Path) -> None:
    paths = provision(controller, tmp_path, "xa-hung-nguyen")
    enrolled = await enroll(paths)

    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=xa-hung-nguyen"
    assert f"{cert.serial_number:x}" == enrolled.serial
    assert not paths.token.exists(), "the single-use token must be deleted"
    assert (paths.key.stat().st_mode & 0o777) == 0o600
    controller_pub = base64.b64decode(paths.controller_pub.read_text())
    assert controller_pub == controller.signing.public_raw()

    bound = controller.identities.get("xa-hung-nguyen")
    assert bound is not None
    assert bound.sign_key == Identity(paths.state).signing_public_raw()
    assert bound.cert_serial == enrolled.serial

    config = agent_config(paths)
    assert config.mqtt.tls and config.mqtt.port == controller.config.mqtt.port
    assert config.device.commune == "hung-nguyen" and config.board.profile == "sim"
    assert config.recording.archive_url == controller.boxes.url
    async with running_agent(config) as box:
        await eventually(lambda: (d := controller.registry.get("xa-hung-nguyen")) and d.online,
                         what="the box's birth at the controller")
        # its new certificate opens the box listener: the archive's signed recipients arrive
        await eventually(lambda: box.agent.recipients.current() == controller.archive.recipients,
                         what="the recipients fetched over mutual TLS")
        response = await controller.rpc.request("xa-hung-nguyen", "ping", timeout=10)
        assert response.ok
        assert box.agent.link.connected
        # Enrollment gave the broker this box's subscribe rules (provisioning/dynsec.py).
        assert await box.agent.link.subscribe(("#", 1), ("$SYS/#", 1)) == [0x87, 0x87]

    again = await enroll(paths)
    assert again.already and again.serial == enrolled.serial


async def test_a_box_that_lost_the_answer_gets_the_same_certificate(
        controller: Controller, tmp_path: Path) -> None:
    paths = provision(controller, tmp_path, "xa-a")
    body = request_for(paths)
    first_status, first = await post_enroll(controller, body)
    second_status, second = await post_enroll(controller, body)
    assert (first_status, second_status) == (200, 200)
    assert first["certificate"] == second["certificate"]


async def test_a_box_cannot_enroll_with_another_boxs_public_signing_key(
        controller: Controller, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The issue's attack: xa-b presented xa-a's public signing key and got 200. Without xa-a's
    private key it cannot sign the challenge for its own token and CSR."""
    a, b = provision(controller, tmp_path, "xa-a"), provision(controller, tmp_path, "xa-b")
    assert (await post_enroll(controller, request_for(a)))[0] == 200
    stolen_public = Identity(a.state).signing_public_raw()
    with caplog.at_level(logging.WARNING):
        status, answer = await post_enroll(controller, request_for(b, sign_key=stolen_public))
    assert (status, refusal_code(answer)) == (403, "bad_proof")
    assert "enroll_refused device=xa-b" in caplog.text and "code=bad_proof" in caplog.text
    assert controller.identities.get("xa-b") is None
    # The token was not spent: with its own key the box still enrolls.
    assert (await post_enroll(controller, request_for(b)))[0] == 200


async def test_a_cloned_signing_key_is_bound_to_one_box_only(
        controller: Controller, tmp_path: Path) -> None:
    """Whoever holds xa-a's private key (a stolen box) can sign the proof; the key is still
    refused for a second box, or recordings would verify as either."""
    a, b = provision(controller, tmp_path, "xa-a"), provision(controller, tmp_path, "xa-b")
    assert (await post_enroll(controller, request_for(a)))[0] == 200
    clone = Identity(a.state)
    status, answer = await post_enroll(controller, request_for(
        b, sign_key=clone.signing_public_raw(), signer=clone))
    assert (status, refusal_code(answer)) == (409, "duplicate_sign_key")
    assert controller.identities.holders(clone.signing_public_raw()) == ["xa-a"]


async def test_a_proof_is_bound_to_its_token_and_csr(controller: Controller,
                                                     tmp_path: Path) -> None:
    paths = provision(controller, tmp_path, "xa-a")
    good = request_for(paths)
    key = tls_key(paths.key)
    other_csr = make_csr(key, "xa-a")  # same key and subject, other bytes
    assert other_csr != good["csr"]
    replayed = request_for(paths, csr=other_csr)["sign_proof"]
    for changed in ({"csr": other_csr}, {"sign_proof": replayed},
                    {"token": good["token"][::-1]}):
        status, answer = await post_enroll(controller, {**good, **changed})
        assert (status, refusal_code(answer)) == (403, "bad_proof"), changed
    status, answer = await post_enroll(controller, {**good, "sign_proof": ""})
    assert (status, refusal_code(answer)) == (400, "no_proof")
    old = {k: v for k, v in good.items() if k != "sign_proof"}
    assert refusal_code((await post_enroll(controller, old))[1]) == "no_proof"
    assert (await post_enroll(controller, good))[0] == 200


async def test_reused_token_is_refused(controller: Controller, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    paths = provision(controller, tmp_path, "xa-a")
    token = token_of(paths)
    await enroll(paths)
    thief = tmp_path / "thief"
    thief_key = tls_key(thief / "tls" / "device.key")
    body = request_for(paths, token=token, csr=make_csr(thief_key, "xa-a"))
    with caplog.at_level(logging.WARNING):
        status, answer = await post_enroll(controller, body)
    assert status == 403 and refusal_code(answer) == "token_used"
    assert "enroll_refused device=xa-a" in caplog.text and "code=token_used" in caplog.text
    assert token not in caplog.text, "tokens are never logged"


async def test_expired_token_is_refused(controller: Controller, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    paths = provision(controller, tmp_path, "xa-a", days=1e-6)  # about 0.09 s
    await asyncio.sleep(0.3)
    with caplog.at_level(logging.WARNING), pytest.raises(EnrollError) as refused:
        await enroll(paths)
    assert refused.value.code == "expired"
    assert "code=expired" in caplog.text
    assert paths.token.exists(), "a refused box keeps its token for the technician to see"


async def test_token_for_another_commune_is_refused(controller: Controller, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    paths = provision(controller, tmp_path, "xa-a", commune="hung-nguyen")
    with caplog.at_level(logging.WARNING):
        status, answer = await post_enroll(controller, request_for(paths, commune="dien-chau"))
    assert status == 403 and refusal_code(answer) == "wrong_commune"
    assert "commune=dien-chau" in caplog.text and "code=wrong_commune" in caplog.text


async def test_token_of_another_box_is_refused(controller: Controller, tmp_path: Path) -> None:
    a = provision(controller, tmp_path, "xa-a")
    provision(controller, tmp_path, "xa-b")
    status, answer = await post_enroll(controller, request_for(a, device="xa-b"))
    assert status == 403 and refusal_code(answer) == "wrong_device"


@pytest.mark.parametrize("csr", [
    "not a certificate request",
    "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
])
async def test_malformed_csr_is_refused_and_does_not_spend_the_token(
        controller: Controller, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        csr: str) -> None:
    paths = provision(controller, tmp_path, "xa-a")
    with caplog.at_level(logging.WARNING):
        status, answer = await post_enroll(controller, request_for(paths, csr=csr))
    assert status == 400 and refusal_code(answer) == "malformed_csr"
    assert "code=malformed_csr" in caplog.text
    assert (await enroll(paths)).device == "xa-a"


async def test_csr_with_a_bad_signature_is_refused(controller: Controller,
                                                   tmp_path: Path) -> None:
    paths = provision(controller, tmp_path, "xa-a")
    good = request_for(paths)["csr"]
    other = ec.generate_private_key(ec.SECP256R1())
    csr = x509.load_pem_x509_csr(good.encode())
    # Same subject, signed by a key other than the one inside: a spliced request.
    spliced = (x509.CertificateSigningRequestBuilder().subject_name(csr.subject)
               .sign(other, hashes.SHA256()))
    der = bytearray(spliced.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF
    pem = ("-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der)).decode()
           + "-----END CERTIFICATE REQUEST-----\n")
    status, answer = await post_enroll(controller, request_for(paths, csr=pem))
    assert status == 400 and refusal_code(answer) == "malformed_csr"


@pytest.mark.parametrize("subject", [
    [x509.NameAttribute(NameOID.COMMON_NAME, "xa-b")],
    [x509.NameAttribute(NameOID.COMMON_NAME, "controller-central")],
    [x509.NameAttribute(NameOID.COMMON_NAME, "xa-a"),
     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tiepdan")],
    [x509.NameAttribute(NameOID.COMMON_NAME, "xa-a"),
     x509.NameAttribute(NameOID.COMMON_NAME, "xa-b")],
])
async def test_csr_with_a_forged_subject_is_refused(
        controller: Controller, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        subject: list[x509.NameAttribute]) -> None:
    paths = provision(controller, tmp_path, "xa-a")
    provision(controller, tmp_path, "xa-b")
    key = tls_key(paths.key)
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
           .sign(key, hashes.SHA256())).public_bytes(serialization.Encoding.PEM).decode()
    with caplog.at_level(logging.WARNING):
        status, answer = await post_enroll(controller, request_for(paths, csr=csr))
    assert status == 403 and refusal_code(answer) == "forged_subject"
    assert "code=forged_subject" in caplog.text
    assert controller.identities.get("xa-a") is None


async def test_tls_key_must_be_p256(controller: Controller, tmp_path: Path) -> None:
    paths = provision(controller, tmp_path, "xa-a")
    key = ed25519.Ed25519PrivateKey.generate()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xa-a")]))
           .sign(key, None)).public_bytes(serialization.Encoding.PEM).decode()
    status, answer = await post_enroll(controller, request_for(paths, csr=csr))
    assert status == 400 and refusal_code(answer) == "bad_key"


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"device": "xa-a"}', b"\xff" * 20_000])
async def test_garbage_requests_are_refused_and_the_controller_lives_on(
        controller: Controller, tmp_path: Path, body: bytes) -> None:
    status, _ = await post_enroll(controller, body)
    assert status in (400, 413)
    paths = provision(controller, tmp_path, "xa-a")
    assert (await enroll(paths)).device == "xa-a"


async def test_enrollment_is_rate_limited_per_address(
        secure_broker: SecureBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = secure_broker.controller_config(provisioning={"enroll_rate": 0.1,
                                                           "enroll_burst": 3})
    async with running_controller(config) as controller:
        await eventually(lambda: controller.provisioning.enrollment.port)
        with caplog.at_level(logging.WARNING):
            statuses = [(await post_enroll(controller, b"{}"))[0] for _ in range(5)]
        assert statuses == [400, 400, 400, 429, 429]
        assert "enroll_rate_limited peer=127.0.0.1" in caplog.text


async def test_a_box_never_sends_its_token_to_a_server_its_ca_does_not_vouch_for(
        controller: Controller, tmp_path: Path) -> None:
    paths = provision(controller, tmp_path, "xa-a")
    impostor = CertificateAuthority.create("impostor")
    (paths.folder / "ca.pem").write_bytes(impostor.pem)
    with pytest.raises(EnrollError) as refused:
        await enroll(paths, retry_min=0.1, retry_max=0.2,
                     deadline=asyncio.get_running_loop().time() + 1.0)
    assert refused.value.code == "unreachable"
    box = controller.provisioning.claims.get("xa-a")
    assert box is not None and box.enrolled_at is None


async def test_device_ids_that_could_pass_for_the_controller_are_refused(
        controller: Controller) -> None:
    with pytest.raises(ClaimRefused, match="controller-"):
        controller.provisioning.new_box(NewBox(commune="x", hall="h",
                                               device="controller-central"))


async def test_a_revoked_or_enrolled_device_id_is_never_reissued(
        controller: Controller, tmp_path: Path) -> None:
    paths = provision(controller, tmp_path, "xa-a")
    await enroll(paths)
    with pytest.raises(ClaimRefused, match="already enrolled"):
        controller.provisioning.new_box(NewBox(commune="x", hall="h", device="xa-a"))


async def test_a_box_keeps_trying_until_the_controller_is_back(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    config = secure_broker.controller_config(provisioning={"enroll_port": free_port()})
    async with running_controller(config) as controller:
        paths = provision(controller, tmp_path, "xa-a")
    first_boot = asyncio.create_task(enroll(paths, retry_min=0.2, retry_max=0.5))
    await asyncio.sleep(1.0)
    assert not first_boot.done(), "an unreachable controller is not a refusal"
    async with running_controller(config) as controller:
        enrolled = await asyncio.wait_for(first_boot, 30)
        assert controller.identities.get("xa-a") is not None
    assert enrolled.device == "xa-a" and not paths.token.exists()


async def test_many_boxes_enroll_at_once(secure_broker: SecureBroker, tmp_path: Path,
                                         soak: bool) -> None:
    count = 200 if soak else 20
    config = secure_broker.controller_config(provisioning={"enroll_rate": 1000,
                                                           "enroll_burst": 1000})
    async with running_controller(config) as controller:
        await eventually(lambda: controller.provisioning.enrollment.port)
        boxes = [provision(controller, tmp_path, f"xa-{n:03d}") for n in range(count)]
        results = await asyncio.gather(*(enroll(paths) for paths in boxes))
        assert len({r.serial for r in results}) == count
        assert sum(1 for b in controller.provisioning.claims.all()
                   if b.state() == "enrolled") == count


async def test_without_a_ca_the_controller_runs_and_refuses_to_provision(
        broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        async with running_controller(make_controller_config(tmp_path, broker)) as controller:
            await eventually(lambda: "provisioning_disabled" in caplog.text)
            assert controller.provisioning.enrollment.port is None
            with pytest.raises(Unavailable, match="ca init"):
                controller.provisioning.new_box(NewBox(commune="c", hall="h"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)
fields = {"device": st.sampled_from(["xa-a", "xa-b", "controller-central", "", "X"]),
          "commune": st.sampled_from(["hung-nguyen", "", "x" * 17]),
          "token": st.text(min_size=16, max_size=60), "csr": st.text(max_size=300),
          "sign_key": st.sampled_from(["A" * 43 + "=", "A" * 44, ""])}
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={k: v | json_values for k, v in fields.items()})
    .map(lambda v: json.dumps(v).encode()),
)


@pytest.fixture
def fuzz_target(secure_broker: SecureBroker, tmp_path: Path
                ) -> Iterator[tuple[LoopThread, Controller, Paths]]:
    lt = LoopThread()
    config = secure_broker.controller_config(provisioning={"enroll_rate": 10_000,
                                                           "enroll_burst": 10_000})
    manager = running_controller(config)
    controller = lt.run(manager.__aenter__())
    lt.run(eventually(lambda: controller.provisioning.enrollment.port))
    paths = provision(controller, tmp_path, "xa-a")
    yield lt, controller, paths
    lt.run(manager.__aexit__(None, None, None))
    lt.close()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_the_enrollment_endpoint_refuses_garbage_and_lives_on(
        fuzz_target: tuple[LoopThread, Controller, Paths], body: bytes) -> None:
    lt, controller, _ = fuzz_target
    status, answer = lt.run(post_enroll(controller, body))
    assert status in (400, 403, 413), (status, answer)
    assert refusal_code(answer)


def test_after_fuzzing_a_real_box_still_enrolls(
        fuzz_target: tuple[LoopThread, Controller, Paths]) -> None:
    lt, controller, paths = fuzz_target
    for body in (b"\x00", b"{}", b'{"device": 1}'):
        lt.run(post_enroll(controller, body))
    assert lt.run(enroll(paths)).device == "xa-a"


async def test_a_box_that_misnames_itself_is_flagged(controller: Controller,
                                                     tmp_path: Path) -> None:
    """A box chooses what its birth says; the controller compares it with what was issued."""
    paths = provision(controller, tmp_path, "xa-dien-chau")
    await enroll(paths)
    settings = tomllib.loads(paths.agent_config.read_text())
    settings["device"]["commune"] = "quynh-luu"
    paths.agent_config.write_text(tomli_w.dumps(settings))
    async with running_agent(agent_config(paths)):
        device = await eventually(lambda: (d := controller.registry.get("xa-dien-chau"))
                                  and d.online and d, what="the birth")
        await eventually(lambda: device.extra.get("identity_mismatch") == ["commune"],
                         what="the mismatch flagged")

    settings["device"]["commune"] = "hung-nguyen"
    paths.agent_config.write_text(tomli_w.dumps(settings))
    async with running_agent(agent_config(paths)):
        await eventually(lambda: device.online and device.commune == "hung-nguyen",
                         what="the corrected birth")
        await eventually(lambda: device.extra.get("identity_mismatch") == [],
                         what="the flag cleared")


async def test_a_burst_of_enrollments_registers_every_box_with_the_broker(
        controller: Controller, secure_broker: SecureBroker, tmp_path: Path) -> None:
    """The broker admin identity has one client id: concurrent enrollments share a connection
    instead of taking it over from each other (and failing)."""
    devices = [f"xa-burst-{n}" for n in range(6)]
    requests = [request_for(provision(controller, tmp_path, d)) for d in devices]
    answers = await asyncio.gather(*(post_enroll(controller, r) for r in requests))
    assert [status for status, _ in answers] == [200] * len(devices)
    cn = "controller-central-broker-admin"
    tls = secure_broker.issue(cn, tmp_path / "admin")
    assert tls.cert_file is not None and tls.key_file is not None
    admin = dynsec.Admin(secure_broker.host, secure_broker.port, tls.ca_file, tls.cert_file,
                         tls.key_file, client_id=cn)
    listed = await asyncio.to_thread(admin.run, [{"command": "listClients", "verbose": False}])
    clients = set(listed[0]["data"]["clients"])
    assert set(devices) <= clients

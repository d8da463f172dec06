"""The provisioning parts on their own: claims store, CA, SD-card folder, labels, rate limit."""

from __future__ import annotations

import base64
import ipaddress
import json
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import segno
from cryptography import x509
from PIL import Image

from tiepdan.controller.enrollment.enrollment import RateLimiter
from tiepdan.controller.store import Database
from tiepdan.firmware import protocol
from tiepdan.firmware.core.config import DeviceSection
from tiepdan.firmware.firstboot.enroll import (
    check_certificate,
    make_csr,
    tls_key,
    write_agent_config,
)
from tiepdan.firmware.protocol.firstboot import (
    BrokerSection,
    EnrollError,
    Provision,
    read_provision,
)
from tiepdan.provisioning.boot import write_boot_folder
from tiepdan.provisioning.ca import (
    CertificateAuthority,
    CsrRefused,
    cert_pem,
    check_device_csr,
    new_key,
)
from tiepdan.provisioning.claims import ClaimRefused, ClaimStore, token_hash
from tiepdan.provisioning.label import BORDER, SCALE, Label, qr_code, write_labels
from tiepdan.provisioning.material import check_box_id

KEY = "a" * 64
SIGN = b"s" * 32


@pytest.fixture
def claims(database: Path | str) -> Iterator[ClaimStore]:
    db = Database(database)
    yield ClaimStore(db.conn)
    db.close()


def test_a_token_is_stored_only_as_its_hash(claims: ClaimStore) -> None:
    token, _ = claims.issue("xa-a", commune="c1", hall="h", ttl=60)
    dump = repr([tuple(row) for table in ("provisioned_boxes", "device_certificates")
                 for row in claims._conn.execute(f"SELECT * FROM {table}").fetchall()])
    assert token not in dump and token_hash(token) in dump
    assert len(base64.urlsafe_b64decode(token + "=")) == 32


def test_claims_are_bound_to_device_commune_and_time(claims: ClaimStore) -> None:
    token, box = claims.issue("xa-a", commune="c1", hall="h", ttl=60, at=1000)
    assert box.state(at=1000) == "waiting" and box.state(at=1060) == "expired"
    ok = claims.claim(token, device="xa-a", commune="c1", tls_key=KEY, sign_key=SIGN, at=1059)
    assert ok.device == "xa-a" and ok.cert_pem is None
    for kwargs, code in [
        ({"device": "xa-b", "commune": "c1"}, "wrong_device"),
        ({"device": "xa-a", "commune": "c2"}, "wrong_commune"),
    ]:
        with pytest.raises(ClaimRefused) as refused:
            claims.claim(token, tls_key=KEY, sign_key=SIGN, at=1001, **kwargs)  # type: ignore[arg-type]
        assert refused.value.code == code
    with pytest.raises(ClaimRefused) as refused:
        claims.claim(token, device="xa-a", commune="c1", tls_key=KEY, sign_key=SIGN, at=1060)
    assert refused.value.code == "expired"
    with pytest.raises(ClaimRefused) as refused:
        claims.claim("x" * 43, device="xa-a", commune="c1", tls_key=KEY, sign_key=SIGN)
    assert refused.value.code == "unknown_token"


def test_a_token_is_spent_once_except_for_the_box_that_spent_it(claims: ClaimStore) -> None:
    token, _ = claims.issue("xa-a", commune="c1", hall="h", ttl=60)
    claims.claim(token, device="xa-a", commune="c1", tls_key=KEY, sign_key=SIGN)
    claims.enrolled("xa-a", tls_key=KEY, sign_key=SIGN, cert_pem="PEM", cert_serial="1f",
                    cert_not_after=2e9, peer="10.0.0.7")
    again = claims.claim(token, device="xa-a", commune="c1", tls_key=KEY, sign_key=SIGN)
    assert again.cert_pem == "PEM"
    for tls, sign in [("b" * 64, SIGN), (KEY, b"t" * 32)]:
        with pytest.raises(ClaimRefused) as refused:
            claims.claim(token, device="xa-a", commune="c1", tls_key=tls, sign_key=sign)
        assert refused.value.code == "token_used"
    with pytest.raises(ClaimRefused, match="already been used"):
        claims.enrolled("xa-a", tls_key=KEY, sign_key=SIGN, cert_pem="PEM2", cert_serial="2f",
                        cert_not_after=2e9, peer="10.0.0.8")


def test_a_new_token_replaces_the_old_one_until_enrollment(claims: ClaimStore) -> None:
    old, _ = claims.issue("xa-a", commune="c1", hall="h", ttl=60)
    new, _ = claims.issue("xa-a", commune="c1", hall="h", ttl=60)
    with pytest.raises(ClaimRefused, match="no such claim token"):
        claims.claim(old, device="xa-a", commune="c1", tls_key=KEY, sign_key=SIGN)
    claims.claim(new, device="xa-a", commune="c1", tls_key=KEY, sign_key=SIGN)
    claims.revoke("xa-a", "lost", at=5)
    with pytest.raises(ClaimRefused) as refused:
        claims.claim(new, device="xa-a", commune="c1", tls_key=KEY, sign_key=SIGN)
    assert refused.value.code == "revoked"
    assert claims.revoked_devices() == ["xa-a"]


def test_the_crl_lists_only_revoked_certificates_not_yet_expired(claims: ClaimStore) -> None:
    claims.add_revoked_certificate("1f", device="xa-a", not_after=100, reason="r", at=1)
    claims.add_revoked_certificate("2f", device="xa-a", not_after=300, reason="r", at=2)
    assert claims.revoked_certificates(at=200) == [(0x2F, 2)]


@pytest.mark.parametrize("device", ["controller-central", "controller-x", "Xa", "-a", "a" * 64])
def test_ids_a_box_may_not_have(device: str) -> None:
    with pytest.raises(ValueError):
        check_box_id(device)


def test_the_ca_signs_servers_for_names_and_addresses_and_knows_its_own() -> None:
    ca, other = CertificateAuthority.create("a"), CertificateAuthority.create("b")
    cert = ca.issue_server(new_key().public_key(), "broker", ["mqtt.example", "10.1.2.3"], 30)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mqtt.example"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert ca.issued(cert) and not other.issued(cert)


def test_csr_checks() -> None:
    key = new_key()
    assert check_device_csr(make_csr(key, "xa-a"), "xa-a").subject.rfc4514_string() == "CN=xa-a"
    with pytest.raises(CsrRefused) as refused:
        check_device_csr(make_csr(key, "xa-b"), "xa-a")
    assert refused.value.code == "forged_subject"
    with pytest.raises(CsrRefused) as refused:
        check_device_csr("garbage", "xa-a")
    assert refused.value.code == "malformed_csr"


def provision_file() -> Provision:
    return Provision(
        enroll_url="https://ctl.example:8443/v1/enroll",
        device=DeviceSection(id="xa-a", name="UBND xã Hưng Nguyên", commune="c1"),
        broker=BrokerSection(host="mqtt.example", port=8883))


def test_the_boot_folder_is_what_the_box_reads(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("a")
    folder = write_boot_folder(tmp_path, provision_file(), ca.pem, "tok" * 10)
    provision, ca_pem, token = read_provision(folder)
    assert provision == provision_file() and ca_pem == ca.pem and token == "tok" * 10
    assert "UBND xã Hưng Nguyên" in (folder / "README.txt").read_text()
    assert not any(p.name.endswith(".key") for p in folder.iterdir()), "no key on the card"


@pytest.mark.parametrize(("name", "text", "code"), [
    ("provision.toml", "enroll_url = 'http://plain'\n", "bad_provisioning"),
    ("ca.pem", "not a certificate", "bad_provisioning"),
    ("claim.token", "", "no_token"),
])
def test_a_broken_boot_folder_is_a_clear_error(tmp_path: Path, name: str, text: str,
                                               code: str) -> None:
    folder = write_boot_folder(tmp_path, provision_file(), CertificateAuthority.create("a").pem,
                               "t" * 30)
    (folder / name).write_text(text)
    with pytest.raises(EnrollError) as broken:
        read_provision(folder)
    assert broken.value.code == code


def test_the_box_accepts_only_its_own_certificate(tmp_path: Path) -> None:
    ca, other = CertificateAuthority.create("a"), CertificateAuthority.create("b")
    key = tls_key(tmp_path / "device.key")

    def answer(cert: x509.Certificate, device: str = "xa-a") -> protocol.EnrollResponse:
        return protocol.EnrollResponse(device=device, certificate=cert_pem(cert).decode(),
                                       ca=ca.pem.decode(), controller_sign_key="A" * 43 + "=")

    good = ca.issue_client(key.public_key(), "xa-a", 30)
    assert check_certificate(answer(good), device="xa-a", ca_pem=ca.pem, key=key) == good
    for bad in (ca.issue_client(new_key().public_key(), "xa-a", 30),
                ca.issue_client(key.public_key(), "xa-b", 30),
                other.issue_client(key.public_key(), "xa-a", 30)):
        with pytest.raises(EnrollError):
            check_certificate(answer(bad), device="xa-a", ca_pem=ca.pem, key=key)


def test_enrollment_keeps_other_agent_settings(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[board]\nprofile = "rpi4"\n[mqtt]\nkeepalive = 30\ncert_file = "/x"\n')
    write_agent_config(config, provision_file(), tmp_path / "state")
    data = tomllib.loads(config.read_text())
    assert data["board"] == {"profile": "rpi4"}
    assert data["mqtt"] == {"keepalive": 30, "host": "mqtt.example", "port": 8883, "tls": True}
    assert data["device"]["name"] == "UBND xã Hưng Nguyên"
    assert data["state"]["dir"] == str(tmp_path / "state")


def test_labels_carry_the_device_and_its_commune(tmp_path: Path) -> None:
    label = Label("xa-a", "17980", "UBND xã Hưng Nguyên", "nghe-an")
    png, svg = write_labels(tmp_path, label)
    payload = json.loads(label.payload())
    assert payload == {"tiepdan": 1, "device": "xa-a", "commune": "17980",
                       "hall": "UBND xã Hưng Nguyên", "province": "nghe-an"}
    # The PNG's modules are exactly the QR code of that payload.
    matrix = qr_code(label).matrix
    image = Image.open(png).convert("L")
    for y, row in enumerate(matrix):
        for x, dark in enumerate(row):
            pixel = image.getpixel(((x + BORDER) * SCALE + SCALE // 2,
                                    (y + BORDER) * SCALE + SCALE // 2))
            assert (pixel == 0) == bool(dark)
    assert segno.make(label.payload(), error="m").matrix == matrix
    texts = [t.text for t in ET.parse(svg).iter("{http://www.w3.org/2000/svg}text")]
    assert texts == ["xa-a", "UBND xã Hưng Nguyên", "commune 17980 · nghe-an"]


def test_rate_limiter() -> None:
    limiter = RateLimiter(rate=0.5, burst=2)
    assert [limiter.take("p", now=0) for _ in range(3)] == [0, 0, 2.0]
    assert limiter.take("q", now=0) == 0
    assert limiter.take("p", now=2.0) == 0
    small = RateLimiter(rate=1, burst=1, max_keys=2)
    for peer in ("a", "b", "c"):
        small.take(peer, now=0)
    assert len(small._buckets) == 2


def test_enroll_request_is_checked_strictly() -> None:
    good = {"device": "xa-a", "commune": "c", "token": "t" * 43, "csr": "x",
            "sign_key": base64.b64encode(b"k" * 32).decode()}
    protocol.decode(msgspec.json.encode(good), protocol.EnrollRequest)
    for bad in ({**good, "sign_key": base64.b64encode(b"k" * 31).decode()},
                {**good, "device": "controller central"}, {**good, "extra": 1},
                {**good, "token": "short"}, {**good, "sign_proof": "A" * 87 + "="},
                {**good, "sign_proof": "A" * 86 + "==\n"}):
        with pytest.raises(protocol.ProtocolError):
            protocol.decode(msgspec.json.encode(bad), protocol.EnrollRequest)


def test_the_first_boot_unit_runs_enrollment_once_before_the_agent(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    unit = (root / "firmware/systemd/tiepdan-firstboot.service").read_text()
    for line in ("Type=oneshot", "Before=tiepdan-agent.service",
                 "ConditionPathExists=/boot/firmware/tiepdan/claim.token",
                 "TimeoutStartSec=infinity", "After=network-online.target time-sync.target"):
        assert line in unit
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    local = tmp_path / "tiepdan-firstboot.service"
    enroll_bin = Path(sys.executable).parent / "tiepdan-enroll"
    local.write_text(unit.replace("/opt/tiepdan/current/bin/tiepdan-enroll",
                                  str(enroll_bin)))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True,
                            check=False)
    problems = [line for line in result.stderr.splitlines()
                if "tiepdan-firstboot.service" in line and str(local) not in line]
    assert not problems, result.stderr

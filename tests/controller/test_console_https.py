"""The console over HTTPS: a certificate from a real CA, a client that checks it, the Secure
session cookie working without any loopback exemption."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest

from tests.controller.console_support import LOGIN_CSRF, PASSWORD, add_people
from tests.support import make_controller_config, running_controller
from tiepdan.controller.config import ConsoleSection
from tiepdan.controller.console.https import HttpsError, server_context
from tiepdan.provisioning.ca import CertificateAuthority, cert_pem, new_key, write_key, write_public
from tiepdan.tools.broker import Mosquitto, free_port


def issue(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca = CertificateAuthority.create("console test CA")
    key = new_key()
    cert = ca.issue_server(key.public_key(), "console", ["127.0.0.1", "localhost"], 30)
    write_key(tmp_path / "console.key", key)
    write_public(tmp_path / "console.pem", cert_pem(cert))
    write_public(tmp_path / "ca.pem", ca.pem)
    return tmp_path / "console.pem", tmp_path / "console.key", tmp_path / "ca.pem"


async def test_console_signs_in_over_https(tmp_path: Path, broker: Mosquitto) -> None:
    cert, key, ca = issue(tmp_path)
    config = make_controller_config(tmp_path, broker, console={
        "https_host": "127.0.0.1", "https_port": free_port(), "cert_file": str(cert),
        "key_file": str(key)})
    async with running_controller(config) as c:
        add_people(c)
        assert c.https_port == config.console.https_port
        trust = ssl.create_default_context(cafile=str(ca))
        base = f"https://127.0.0.1:{c.https_port}"
        jar = aiohttp.CookieJar(unsafe=True)  # unsafe: cookies of an IP-address host
        async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(ssl=trust),
                                         cookie_jar=jar) as http:
            async with http.get("/login") as form:
                token = LOGIN_CSRF.search(await form.text())
            assert token is not None
            async with http.post("/login", data={"name": "quantri", "password": PASSWORD,
                                                 "login_csrf": token[1]}) as reply:
                assert reply.status == 200 and "Đội hộp" in await reply.text()
        async with aiohttp.ClientSession(base) as untrusting:  # the system CAs only
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await untrusting.get("/login")


def test_half_a_tls_configuration_is_refused(tmp_path: Path) -> None:
    cert, _key, _ca = issue(tmp_path)
    assert server_context(ConsoleSection()) is None
    with pytest.raises(HttpsError, match="go together"):
        server_context(ConsoleSection(cert_file=str(cert)))
    with pytest.raises(HttpsError, match="console certificate"):
        server_context(ConsoleSection(cert_file=str(cert), key_file=str(cert)))

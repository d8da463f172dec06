"""Proving what the broker does with a certificate, from the outside: a revoked one is refused
at the handshake, and a connection under a box's id takes over (ends) the box's own session.

Revocation is only done when the broker says so, so the provisioning service asks it with
throw-away certificates rather than trusting that the files it wrote were reloaded.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tiepdan.firmware.evidence.identity import write_private
from tiepdan.provisioning.ca import cert_pem, key_pem

log = logging.getLogger(__name__)


@contextlib.contextmanager
def credentials(parent: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
                 ) -> Any:
    """A throw-away key and certificate as files (what OpenSSL loads), gone afterwards."""
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".ephemeral-") as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        write_private(key_file, key_pem(key))
        cert_file.write_bytes(cert_pem(cert))
        yield cert_file, key_file


def handshake_refused(host: str, port: int, ca_file: Path, cert_file: Path,
                       key_file: Path) -> bool:
    """True when the broker answers this client certificate with 'certificate revoked'."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(str(cert_file), str(key_file))
    try:
        with socket.create_connection((host, port), timeout=3) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            # With TLS 1.3 the server judges the client's certificate after the handshake; its
            # alert arrives with the first read. A broker that accepted us waits for CONNECT.
            tls.settimeout(0.5)
            tls.recv(1)
    except ssl.SSLError as exc:
        return "REVOKED" in (exc.reason or "")
    except OSError:
        return False
    return False


def connect_once(host: str, port: int, ca_file: Path, cert_file: Path, key_file: Path,
                  device: str, timeout: float = 5.0) -> bool:
    """Connect as `device` with a clean start: the broker closes the box's connection and
    drops its session (MQTT 5 session takeover). True when the broker accepted us."""
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=device,
                         protocol=MQTTProtocolVersion.MQTTv5)
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(str(cert_file), str(key_file))
    client.tls_set_context(context)
    done = threading.Event()
    accepted: list[bool] = []

    def on_connect(client: paho.Client, userdata: object, flags: object, reason: Any,
                   properties: object) -> None:
        accepted.append(not reason.is_failure)
        done.set()

    client.on_connect = on_connect
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 0
    try:
        client.connect(host, port, keepalive=5, clean_start=True, properties=properties)
        deadline = time.monotonic() + timeout
        while not done.is_set() and time.monotonic() < deadline:
            client.loop(0.1)
        if accepted and accepted[0]:
            client.disconnect()
            client.loop(0.1)
    except (OSError, ssl.SSLError) as exc:
        log.error("broker_takeover_failed device=%s error=%s", device, exc)
        return False
    finally:
        with contextlib.suppress(Exception):
            client._sock_close()
    return bool(accepted and accepted[0])

"""The broker's half of fleet security, written as Mosquitto 2.0 configuration.

Behaviour of Mosquitto 2.0.11 (Debian bookworm) this relies on, each checked against the real
broker in tests/provisioning/test_broker_security.py:

- `require_certificate true`: a client without a certificate, or with one from another CA, fails
  the TLS handshake (logged as "peer did not return a certificate" / "certificate verify
  failed").
- `use_identity_as_username true`: the certificate's CN is the MQTT username; any username or
  password the client sends is ignored. `use_username_as_clientid true`: the CN is also the
  client id, so no box can take over another box's session by borrowing its client id.
- `acl_file`: PUBLISH is checked on receipt (a denied QoS 1 publish gets PUBACK 0x87; the broker
  logs "Denied PUBLISH" at debug level only). Read access is checked for every message at
  delivery, retained ones included. SUBSCRIBE itself is *not* checked by the ACL file (the
  source says "FIXME - implement ACL subscription strings"); the dynamic-security plugin checks
  it instead (see provisioning/dynsec.py): a refused SUBSCRIBE gets SUBACK 0x87. The broker
  logs granted subscriptions (`log_type subscribe`), never a refused one.
- Limits (`LIMITS`): a PUBLISH larger than `max_packet_size` is refused and its sender
  disconnected ("exceeded maximum packet size" with `log_type debug`, otherwise a plain
  disconnect); queued messages per client are bounded in number and bytes, oldest kept, newest
  dropped; a session nobody resumes is dropped after `persistent_client_expiration`.
- SIGHUP rereads the ACL file (connected clients get the new rules at once) and, on a listener
  with both `crlfile` and `require_certificate`, rebuilds the TLS context with the CRL. A client
  already connected keeps its connection: revocation cuts it separately (session takeover,
  see controller/provisioning.py).
- With `crlfile` set, OpenSSL refuses every client once the CRL passes its next-update time, so
  the controller re-signs the CRL long before that.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tiepdan.firmware import protocol
from tiepdan.provisioning import dynsec

# Room for the topic, MQTT 5 properties (response topic, correlation data, expiry) and headers
# beyond the largest payload either side accepts (protocol.MAX_PAYLOAD).
PACKET_OVERHEAD = 8 * 1024
LIMITS: dict[str, str] = {
    "max_packet_size": str(protocol.MAX_PAYLOAD + PACKET_OVERHEAD),
    # Per client: the controller's queue while it restarts is the largest (QoS 1 events from
    # the whole fleet); a box's is a few commands. Beyond either bound new messages are dropped.
    "max_queued_messages": "20000",
    "max_queued_bytes": str(64 * 1024 * 1024),
    "max_inflight_messages": "100",
    # A box away longer than this (a flood, a long power cut) starts a fresh session; its
    # retained desired state and job are still there.
    "persistent_client_expiration": "14d",
}


@dataclass(frozen=True)
class BrokerFiles:
    """Everything Mosquitto reads for the fleet listener, in one directory."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.dir / "broker.pem"

    @property
    def key(self) -> Path:
        return self.dir / "broker.key"

    @property
    def crl(self) -> Path:
        return self.dir / "crl.pem"

    @property
    def acl(self) -> Path:
        return self.dir / "acl"

    @property
    def conf(self) -> Path:
        return self.dir / "tiepdan.conf"

    @property
    def dynsec(self) -> Path:
        """The dynamic-security plugin's file: written once, then owned by the plugin."""
        return self.dir / "dynamic-security.json"


def box_acl_rules() -> list[str]:
    """The per-device pattern: %u is the certificate's CN, i.e. the device id."""
    access: dict[str, set[str]] = {}
    for suffix in protocol.BOX_PUBLISHES:
        access.setdefault(suffix, set()).add("write")
    for suffix in protocol.BOX_SUBSCRIBES:
        access.setdefault(suffix, set()).add("read")
    lines = []
    for suffix, rights in access.items():
        right = "readwrite" if len(rights) == 2 else next(iter(rights))
        lines.append(f"pattern {right} {protocol.PREFIX}/d/%u/{suffix}")
    lines += [f"pattern read {shared}" for shared in protocol.BOX_READS_SHARED]
    return lines


def acl_text(controllers: Sequence[str], revoked: Iterable[str] = ()) -> str:
    """The whole ACL file: boxes confined to their subtree, the controllers over everything."""
    lines = [
        "# written by tiepdan (provisioning/mosquitto.py) from firmware/protocol.py; do not edit:",
        "# the controller rewrites it on start and on every revocation.",
        "#",
        "# Every box: only its own subtree, in the directions of BOX_PUBLISHES (write) and",
        "# BOX_SUBSCRIBES (read). %u is the CN of the box's certificate, which is its device id.",
        *box_acl_rules(),
        "# (Mosquitto warns that the shared read pattern has no %u or %c; it is meant for all.)",
        "",
    ]
    for controller in controllers:
        lines += [f"user {protocol.check_device_id(controller)}",
                  f"topic readwrite {protocol.PREFIX}/#", ""]
    revoked = sorted(set(revoked))
    if revoked:
        lines.append("# Revoked boxes: nothing at all, even on a connection opened before.")
    for device in revoked:
        lines += [f"user {protocol.check_device_id(device)}", "topic deny #", ""]
    return "\n".join(lines)


def listener_text(files: BrokerFiles, port: int, host: str | None = None, *,
                  debug_log: bool = False, plugin: Path | None = None) -> str:
    """The security settings, limits and the one TLS listener, for mosquitto.conf (or conf.d/).

    `plugin` is the dynamic-security plugin (found in the usual places when not given)."""
    bind = f"listener {port} {host}" if host else f"listener {port}"
    lines = [
        "# tiepdan fleet listener (provisioning/mosquitto.py): mutual TLS only, identity from the",
        "# certificate, per-device ACL, subscribe rules, CRL, size and queue limits. SIGHUP",
        "# reloads the ACL and the CRL. The first lines apply to the whole broker: no anonymous",
        "# client, one ACL for every listener.",
        "per_listener_settings false",
        "allow_anonymous false",
        *(f"{name} {value}" for name, value in LIMITS.items()),
        f"plugin {plugin or dynsec.plugin_path()}",
        f"plugin_opt_config_file {files.dynsec}",
        f"acl_file {files.acl}",
        "log_type subscribe",
        # Mosquitto logs refused publishes ("Denied PUBLISH") only at debug level.
        *(["log_type debug"] if debug_log else []),
        bind,
        f"cafile {files.ca}",
        f"certfile {files.cert}",
        f"keyfile {files.key}",
        f"crlfile {files.crl}",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "tls_version tlsv1.2",
        "",
    ]
    return "\n".join(lines)

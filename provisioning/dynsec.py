"""SUBSCRIBE checks for the fleet broker, through Mosquitto's dynamic-security plugin.

Mosquitto 2.0.11's `acl_file` grants every SUBSCRIBE (it only filters delivery), so a box could
subscribe to `#` or `$SYS/#` and get a SUBACK. The dynamic-security plugin that ships in the
Debian package (`mosquitto_dynamic_security.so`) has subscribe ACL types; it is loaded beside the
ACL file and its ACL callback runs first (plugins register before the ACL file, and SIGHUP
re-registers the ACL file after them). The split of work:

- SUBSCRIBE: each box is a dynamic-security client (its certificate's CN) with its own role:
  `subscribePattern` allows for exactly its BOX_SUBSCRIBES filters and the controllers'
  presence, then a deny of `#` below them. A refused SUBSCRIBE gets SUBACK 0x87.
- PUBLISH and delivery: nothing matches in the roles and the default access is "deny", which the
  plugin turns into "no opinion", so the ACL file (with its `%u` patterns and the deny-all
  entries of revoked boxes) decides, as before.

The plugin has no `%u` substitution in 2.0.11, hence one role per box, added at enrollment over
`$CONTROL/dynamic-security/v1` by a short-lived admin identity the controller issues itself. The
plugin keeps its own JSON file (it rewrites it on every change); this module writes it only when
the broker's material is created. A client the plugin does not know is checked by the ACL file
alone, so the controller registers a box before handing out its certificate and re-registers
every enrolled box at start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import ssl
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tiepdan.errors import Unavailable
from tiepdan.firmware import protocol

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
CONTROLLER_ROLE = "tiepdan-controller"
ADMIN_ROLE = "tiepdan-broker-admin"
ADMIN_SUFFIX = "-broker-admin"
PLUGIN_NAME = "mosquitto_dynamic_security.so"
PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
               "/usr/lib/arm-linux-gnueabihf", "/usr/lib", "/usr/local/lib")
BATCH = 50  # boxes per command message: ~1.5 KiB each
# Commands that may answer "already exists" when a box is registered a second time.
_IDEMPOTENT = ("createClient", "createRole")


class DynsecError(Unavailable, RuntimeError):
    """The broker refused a dynamic-security command, or could not be asked."""


def plugin_path() -> Path:
    """Where the Debian package (or a local build) put the plugin."""
    for directory in PLUGIN_DIRS:
        candidate = Path(directory) / PLUGIN_NAME
        if candidate.exists():
            return candidate
    found = shutil.which(PLUGIN_NAME)
    if found:
        return Path(found)
    raise DynsecError(f"{PLUGIN_NAME} not found in {', '.join(PLUGIN_DIRS)} "
                      "(Debian: apt-get install mosquitto)")


def box_role(device: str) -> str:
    return f"box-{protocol.check_device_id(device)}"


def admin_username(controller_client: str) -> str:
    """The admin identity's CN: starts with `controller-`, which no box id may."""
    return f"{controller_client}{ADMIN_SUFFIX}"


def _acl(kind: str, topic: str, allow: bool, priority: int = 0) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "priority": priority, "allow": allow}


def box_acls(device: str) -> list[dict[str, Any]]:
    """What `device` may subscribe to: its BOX_SUBSCRIBES filters and the shared reads."""
    root = protocol.device_root(device)
    allowed = [f"{root}/{suffix}" for suffix in protocol.BOX_SUBSCRIBES]
    allowed += list(protocol.BOX_READS_SHARED)
    return [_acl("subscribePattern", topic, True) for topic in allowed] + [
        _acl("subscribePattern", "#", False, priority=-1)]


def controller_acls() -> list[dict[str, Any]]:
    """The controller subscribes to the fleet's tree and nothing else (no `$SYS`, no `#`)."""
    return [_acl("subscribePattern", f"{protocol.PREFIX}/#", True),
            _acl("subscribePattern", "#", False, priority=-1)]


def admin_acls() -> list[dict[str, Any]]:
    return [_acl("publishClientSend", CONTROL_TOPIC, True),
            _acl("publishClientReceive", RESPONSE_TOPIC, True),
            _acl("subscribeLiteral", RESPONSE_TOPIC, True),
            _acl("subscribePattern", "#", False, priority=-1)]


def _client(username: str, role: str) -> dict[str, Any]:
    return {"username": username, "textname": username,
            "roles": [{"rolename": role, "priority": 0}]}


def config_json(controllers: Sequence[str], boxes: Iterable[str] = ()) -> str:
    """The plugin's initial file: controllers (MQTT client ids), their admin identities, and
    any boxes already known. Nobody has a password: identities come from certificates."""
    roles = [{"rolename": CONTROLLER_ROLE, "acls": controller_acls()},
             {"rolename": ADMIN_ROLE, "acls": admin_acls()}]
    clients = []
    for controller in controllers:
        clients += [_client(controller, CONTROLLER_ROLE),
                    _client(admin_username(controller), ADMIN_ROLE)]
    for device in sorted(set(boxes)):
        roles.append({"rolename": box_role(device), "acls": box_acls(device)})
        clients.append(_client(device, box_role(device)))
    document = {
        # "deny" by default: the plugin then defers to the ACL file for publish and delivery.
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                             "subscribe": False, "unsubscribe": True},
        "clients": clients, "groups": [], "roles": roles,
    }
    return json.dumps(document, indent=2) + "\n"


def add_box_commands(device: str) -> list[dict[str, Any]]:
    """Create the box's role with its ACLs, and its client: two commands, because the plugin
    rewrites its whole JSON file after each change."""
    role = box_role(device)
    return [{"command": "createRole", "rolename": role, "acls": box_acls(device)},
            {"command": "createClient", "username": device, "textname": device,
             "roles": [{"rolename": role, "priority": 0}]}]


def update_role_commands(device: str) -> list[dict[str, Any]]:
    """Bring an existing role's ACLs up to date (a protocol with a new topic kind); an ACL
    already there answers "already exists" without touching the file."""
    role = box_role(device)
    return [{"command": "addRoleACL", "rolename": role, **acl} for acl in box_acls(device)]


def check_responses(commands: Sequence[dict[str, Any]],
                    responses: Sequence[dict[str, Any]]) -> None:
    """Raise on the first real failure; "already exists" keeps registration idempotent."""
    if len(responses) != len(commands):
        raise DynsecError(f"{len(commands)} commands got {len(responses)} responses")
    for command, response in zip(commands, responses, strict=True):
        failure = response.get("error")
        if not failure:
            continue
        if command["command"] in _IDEMPOTENT and "already exists" in str(failure):
            continue
        if command["command"] == "addRoleACL" and "already exists" in str(failure):
            continue
        raise DynsecError(f"{command['command']} {command.get('rolename') or ''}"
                          f"{command.get('username') or ''}: {failure}")


class Admin:
    """One short connection that sends commands to the plugin and waits for its answer.

    Blocking (paho's own loop); callers on asyncio run it in a thread. `cert_file` must be an
    identity the plugin knows as an admin (see `admin_username`).
    """

    def __init__(self, host: str, port: int, ca_file: Path, cert_file: Path, key_file: Path,
                 client_id: str, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file
        self.client_id = client_id

    def run(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=self.client_id, protocol=MQTTProtocolVersion.MQTTv5)
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        client.tls_set_context(context)
        subscribed, answered = threading.Event(), threading.Event()
        granted: list[int] = []
        answer: list[dict[str, Any]] = []

        def on_connect(c: paho.Client, userdata: object, flags: object, reason: Any,
                       properties: object) -> None:
            if reason.is_failure:
                answer.append({"error": f"connect refused: {reason}"})
                answered.set()
                return
            c.subscribe(RESPONSE_TOPIC, qos=1)

        def on_subscribe(c: paho.Client, userdata: object, mid: int, reasons: Any,
                         properties: object) -> None:
            granted.extend(int(r.value) for r in reasons)
            subscribed.set()

        def on_message(c: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
            try:
                answer.extend(json.loads(message.payload)["responses"])
            except (ValueError, KeyError, TypeError) as exc:
                answer.append({"error": f"unreadable response: {exc}"})
            answered.set()

        client.on_connect, client.on_subscribe = on_connect, on_subscribe
        client.on_message = on_message
        deadline = time.monotonic() + self.timeout
        try:
            client.connect(self.host, self.port, keepalive=10, clean_start=True)
            while not (subscribed.is_set() or answered.is_set()):
                if time.monotonic() > deadline:
                    raise DynsecError("the broker did not accept the admin subscription")
                client.loop(0.1)
            if granted and granted[0] >= 0x80:
                raise DynsecError(f"the broker refused the admin identity (SUBACK {granted})")
            if not answered.is_set():
                client.publish(CONTROL_TOPIC, json.dumps({"commands": list(commands)}), qos=1)
            while not answered.is_set():
                if time.monotonic() > deadline:
                    raise DynsecError("no answer from the dynamic-security plugin in "
                                      f"{self.timeout:.0f}s (is it loaded?)")
                client.loop(0.1)
            if answer and "responses" not in answer[0] and "command" not in answer[0]:
                raise DynsecError(str(answer[0].get("error")))
            return answer
        except (OSError, ssl.SSLError) as exc:
            raise DynsecError(f"cannot reach the broker at {self.host}:{self.port}: "
                              f"{exc}") from None
        finally:
            with contextlib.suppress(Exception):
                client.disconnect()
                client.loop(0.1)
            with contextlib.suppress(Exception):
                client._sock_close()

    def add_boxes(self, devices: Iterable[str]) -> int:
        """Register every box (idempotent), in batches that stay far below the broker's
        packet limit; the number of boxes sent."""
        wanted = sorted(set(devices))
        for start in range(0, len(wanted), BATCH):
            batch = wanted[start:start + BATCH]
            commands = [c for d in batch for c in add_box_commands(d)]
            responses = self.run(commands)
            check_responses(commands, responses)
            known = [c["rolename"][len("box-"):] for c, r in zip(commands, responses, strict=True)
                     if c["command"] == "createRole" and r.get("error")]
            updates = [c for d in known for c in update_role_commands(d)]
            if updates:
                check_responses(updates, self.run(updates))
        if wanted:
            log.info("broker_subscribe_rules_added boxes=%d", len(wanted))
        return len(wanted)

"""Helpers for the provisioning tests: provision a box the way the technician's tool does."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import tomli_w

from tiepdan.controller.enrollment.provisioning import NewBox
from tiepdan.controller.service import Controller
from tiepdan.firmware import protocol
from tiepdan.firmware.agent.config import AgentConfig, load_config
from tiepdan.firmware.evidence.identity import Identity
from tiepdan.firmware.firstboot.enroll import Paths, make_csr, tls_key
from tiepdan.provisioning.boot import write_boot_folder

FAST_AGENT = {
    "board": {"profile": "sim"},
    "mqtt": {"keepalive": 2, "reconnect_min": 0.2, "reconnect_max": 1.0,
             "connect_timeout": 3.0},
    "telemetry": {"interval": 1.0},
    "log": {"level": "debug"},
}


def provision(controller: Controller, tmp_path: Path, device: str, *,
              commune: str = "hung-nguyen", days: float | None = None) -> Paths:
    """Claim token and first-boot folder for `device`; the agent config starts with test
    settings that enrollment must keep."""
    token, box = controller.provisioning.new_box(
        NewBox(commune=commune, hall=f"UBND xã {device}", device=device, days=days))
    boot = tmp_path / f"boot-{device}"
    write_boot_folder(boot, controller.provisioning.provision_file(box),
                      controller.provisioning.authority().pem, token)
    paths = Paths(boot=boot, state=tmp_path / device, agent_config=tmp_path / f"{device}.toml")
    paths.agent_config.write_text(tomli_w.dumps(FAST_AGENT))
    return paths


def agent_config(paths: Paths) -> AgentConfig:
    return load_config(paths.agent_config)


def token_of(paths: Paths) -> str:
    return paths.token.read_text().strip()


def request_for(paths: Paths, *, device: str | None = None, commune: str = "hung-nguyen",
                token: str | None = None, csr: str | None = None,
                cn: str | None = None, sign_key: bytes | None = None,
                signer: Identity | None = None) -> dict[str, Any]:
    """An enrollment request as a box would build it, with any part replaced; the proof of
    possession is made by `signer` (the box's own signing key unless given)."""
    device = device or paths.state.name
    key = tls_key(paths.key)
    identity = Identity(paths.state)
    public = base64.b64encode(sign_key or identity.signing_public_raw()).decode()
    token = token or token_of(paths)
    csr = csr if csr is not None else make_csr(key, cn or device)
    proof = (signer or identity).signing_key().sign(
        protocol.enroll_challenge(device, token, csr, public))
    return {
        "device": device, "commune": commune, "token": token, "csr": csr,
        "sign_key": public, "sign_proof": base64.b64encode(proof).decode(),
    }


async def post_enroll(controller: Controller, body: dict[str, Any] | bytes
                      ) -> tuple[int, dict[str, Any]]:
    """POST to the enrollment endpoint over HTTPS, checked against the provisioning CA."""
    context = ssl.create_default_context(cadata=controller.provisioning.authority().pem.decode())
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    async with aiohttp.ClientSession() as session, session.post(
            controller.provisioning.enroll_url, data=data, ssl=context) as reply:
        return reply.status, await reply.json(content_type=None)


def refusal_code(answer: dict[str, Any]) -> str:
    return str(protocol.convert(answer["error"], protocol.EnrollRefusal).code)

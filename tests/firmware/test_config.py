"""Configuration: defaults in one place, and a broken file named with its key and problem."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from tiepdan.controller.config import ControllerConfig
from tiepdan.firmware.agent.config import AgentConfig, load_config
from tiepdan.firmware.core.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_minimal_config_takes_documented_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[device]\nid = "xa-a"\nname = "UBND xã A"\n'))
    assert config.mqtt.port == 8883 and config.mqtt.tls is True
    assert config.board.profile == "auto"
    assert config.tls_file("", "ca.pem") == Path("/var/lib/tiepdan/tls/ca.pem")


@pytest.mark.parametrize(("text", "expected"), [
    ('[device]\nid = "xa-a"\nname = "n"\n[mqtt]\nport = "1883"\n',
     r"agent\.toml: mqtt\.port: expected `int`, got `str`"),
    ('[device]\nid = "xa-a"\nname = "n"\n[mqtt]\nprot = 1883\n',
     r"agent\.toml: mqtt\.prot: unknown setting"),
    ('[device]\nname = "n"\n', r"agent\.toml: device\.id: required setting missing"),
    ('[device]\nid = "XA A"\nname = "n"\n', r"agent\.toml: device\.id: expected `str` matching"),
    ('[device]\nid = "xa-a"\nname = "n"\n[mqtt]\nkeepalive = 1\n',
     r"agent\.toml: mqtt\.keepalive: expected `int` >= 2"),
    ('[device\nid = "xa-a"\n', r"agent\.toml: not valid TOML"),
    ('[device]\nid = "xa-a"\nname = "n"\n[mqtt]\nreconnect_min = 9.0\nreconnect_max = 1.0\n',
     r"mqtt\.reconnect_min: must not exceed"),
])
def test_broken_config_names_file_key_and_problem(tmp_path: Path, text: str,
                                                  expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def _settings(kind: type[msgspec.Struct], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for field in msgspec.structs.fields(kind):
        section = field.type
        if isinstance(section, type) and issubclass(section, msgspec.Struct):
            keys |= _settings(section, f"{prefix}{field.name}.")
        else:
            keys.add(f"{prefix}{field.name}")
    return keys


@pytest.mark.parametrize(("kind", "heading"), [(AgentConfig, "agent.toml"),
                                               (ControllerConfig, "controller.toml")])
def test_every_setting_is_documented_in_the_readme(kind: type[msgspec.Struct],
                                                   heading: str) -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"### `{heading}`")
    section = readme[start:readme.find("\n### ", start + 1)]
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", section, re.M))
    missing = _settings(kind) - documented
    assert not missing, f"settings not documented in README ({heading}): {sorted(missing)}"
    stale = documented - _settings(kind)
    assert not stale, f"README documents settings that do not exist: {sorted(stale)}"

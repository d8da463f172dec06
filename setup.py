"""Installables from one tree, chosen at build time by the parts they carry.

`TIEPDAN_TARGET=box` carries only what a commune box runs (board, firmware and the ota library);
`TIEPDAN_PARTS=board,firmware,ota` names the parts one by one (the artifact builder's way);
neither carries everything. A program goes with the part its module lives in. The package list
and the programs are the only dynamic parts of the metadata; the rest is in pyproject.toml.
"""

import os

from setuptools import find_namespace_packages, setup

PARTS = ("board", "firmware", "controller", "ota", "provisioning", "tools")
TARGETS = {"all": PARTS, "box": ("board", "firmware", "ota")}
PROGRAMS = {
    "tiepdan-agent": "tiepdan.firmware.__main__:main",
    "tiepdan-enroll": "tiepdan.firmware.firstboot.enroll:main",
    "tiepdan-install": "tiepdan.firmware.update.install:main",
    "tiepdan-updater": "tiepdan.firmware.update.daemon:main",
    "tiepdan-controller": "tiepdan.controller.__main__:main",
    "tiepdan-demo": "tiepdan.tools.demo:main",
    "tiepdan-provision": "tiepdan.controller.cli.provision:main",
    "tiepdan-ota": "tiepdan.controller.cli.ota:main",
    "tiepdan-archive": "tiepdan.controller.cli.archive:main",
}

target = os.environ.get("TIEPDAN_TARGET", "all")
if target not in TARGETS:
    raise SystemExit(f"TIEPDAN_TARGET={target!r}: use one of {', '.join(TARGETS)}")
parts = tuple(p for p in os.environ.get("TIEPDAN_PARTS", "").split(",") if p) or TARGETS[target]
unknown = set(parts) - set(PARTS)
if unknown:
    raise SystemExit(f"TIEPDAN_PARTS: unknown {sorted(unknown)}; known: {', '.join(PARTS)}")


def carried(module: str) -> bool:
    names = module.split(".")
    return len(names) == 1 or names[1] in parts or names[1] == "errors"


packages = [p for p in find_namespace_packages(include=["tiepdan*"])
            if "__pycache__" not in p and carried(p)]
programs = {k: v for k, v in PROGRAMS.items() if carried(v.split(":")[0])}

setup(packages=packages,
      entry_points={"console_scripts": [f"{k} = {v}" for k, v in programs.items()]})

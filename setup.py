"""Two installables from one tree, chosen by TIEPDAN_TARGET at build time.

`box` carries only what a commune box runs (board, firmware, the ota library and the package
root) and only the box's programs; anything else (the default) carries everything. The package
list and the programs are the only dynamic parts; the rest is in pyproject.toml.
"""

import os

from setuptools import find_namespace_packages, setup

BOX_PACKAGES = ("tiepdan", "tiepdan.board", "tiepdan.firmware", "tiepdan.ota")
BOX_PROGRAMS = ("tiepdan-agent", "tiepdan-enroll", "tiepdan-install")
PROGRAMS = {
    "tiepdan-agent": "tiepdan.firmware.__main__:main",
    "tiepdan-enroll": "tiepdan.firmware.firstboot.enroll:main",
    "tiepdan-install": "tiepdan.firmware.update.install:main",
    "tiepdan-controller": "tiepdan.controller.__main__:main",
    "tiepdan-demo": "tiepdan.tools.demo:main",
    "tiepdan-provision": "tiepdan.controller.cli.provision:main",
    "tiepdan-ota": "tiepdan.controller.cli.ota:main",
    "tiepdan-archive": "tiepdan.controller.cli.archive:main",
}

target = os.environ.get("TIEPDAN_TARGET", "all")
if target not in ("all", "box"):
    raise SystemExit(f"TIEPDAN_TARGET={target!r}: use 'box' or 'all'")
packages = [p for p in find_namespace_packages(include=["tiepdan*"]) if "__pycache__" not in p]
programs = PROGRAMS
if target == "box":
    packages = [p for p in packages
                if p == "tiepdan" or any(p.startswith(b + ".") or p == b
                                         for b in BOX_PACKAGES[1:])]
    programs = {k: v for k, v in PROGRAMS.items() if k in BOX_PROGRAMS}

setup(packages=packages,
      entry_points={"console_scripts": [f"{k} = {v}" for k, v in programs.items()]})

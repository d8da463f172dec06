"""`tiepdan-install BUNDLE [--root /opt/tiepdan]`: the first install of a bundle on an image.

A box-side program (it runs on the image builder, with the base image's Python), so it lives
with the slots it writes rather than in the admin's `tiepdan-ota`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tiepdan.errors import TiepdanError
from tiepdan.firmware.update.slots import install_image

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tiepdan-install", description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--root", type=Path, default=Path("/opt/tiepdan"))
    parser.add_argument("--python", default=sys.executable,
                        help="the base image's interpreter (default: this one)")
    args = parser.parse_args(argv)
    try:
        slot = install_image(args.root, args.bundle, python=args.python)
    except (TiepdanError, OSError) as exc:
        sys.stderr.write(f"tiepdan-install: {exc}\n")
        return 1
    sys.stdout.write(f"installed {slot.version} into {slot.path}; "
                     f"{args.root / 'current'} -> slots/{slot.name}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`tiepdan-controller` / `python -m tiepdan.controller`: run and administer the controller."""

from __future__ import annotations

import sys

from tiepdan.controller.cli.main import main

if __name__ == "__main__":
    sys.exit(main())

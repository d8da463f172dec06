"""`tiepdan-provision` / `python -m tiepdan.provisioning`: provision, verify and revoke boxes."""

from __future__ import annotations

import sys

from tiepdan.provisioning.cli import main

if __name__ == "__main__":
    sys.exit(main())

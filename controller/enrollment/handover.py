"""What a box is handed at enrollment besides its certificate (issue 12).

A box set up the real way must record and update with nothing edited by hand: enrollment tells
it where the archive is (recordings, and whom to seal them to), where the TUF repository is,
and gives it that repository's first root metadata. The root's hash is also written on the SD
card at provisioning (`[ota] root_sha256` in provision.toml), so a box trusts only the root the
technician's controller pinned, even if enrollment were answered by someone else holding a
certificate from the same CA.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from tiepdan.controller.config import ControllerConfig
from tiepdan.ota.repository import RepositoryError, UpdateRepository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Handover:
    archive_url: str
    ota_repository: str
    ota_trusted_root: bytes | None  # None until `tiepdan-ota keys init` has made the repository

    @property
    def root_sha256(self) -> str:
        return hashlib.sha256(self.ota_trusted_root).hexdigest() if self.ota_trusted_root \
            else ""


def handover(config: ControllerConfig, box_url: str) -> Handover:
    """`box_url`: the box listener's address, where the archive and the repository are unless
    configured otherwise (behind a proxy)."""
    try:
        root: bytes | None = UpdateRepository(config.ota_repository_path).trusted_root()
    except (RepositoryError, OSError) as exc:
        log.warning("handover_without_ota_root repository=%s error=%s",
                    config.ota_repository_path, exc)
        root = None
    return Handover(archive_url=config.archive.public_url.rstrip("/") or box_url,
                    ota_repository=config.ota.public_url.rstrip("/") or f"{box_url}/ota",
                    ota_trusted_root=root)

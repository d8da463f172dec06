"""The controller's update feature: serves the TUF repository, keeps its timestamp fresh,
runs the campaign engine and exposes campaigns in the admin API.

Boxes fetch `/ota/metadata/...` and `/ota/targets/...` from the box-facing HTTPS listener,
with their client certificate (`controller.http.boxes`): what protects a box is TUF's signature
chain, but there is no reason to hand bundles to anyone else. Downloads support HTTP Range, for
resuming.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiepdan.controller.updates.campaign import Campaigns
from tiepdan.ota.keys import ONLINE_ROLES, KeyFileError
from tiepdan.ota.repository import Keyring, RepositoryError, UpdateRepository

if TYPE_CHECKING:
    from tiepdan.controller.config import OtaSection

log = logging.getLogger(__name__)


class Updates:
    """The update repository the controller serves and keeps fresh, and its campaigns."""

    def __init__(self, settings: OtaSection, repository: Path, data_dir: Path,
                 campaigns: Campaigns) -> None:
        self.repository_path = repository
        self.keys = Path(settings.keys or data_dir / "ota" / "keys")
        self.refresh_interval = settings.refresh_interval
        self.campaigns = campaigns
        self.repository_path.mkdir(parents=True, exist_ok=True)

    async def run(self) -> None:
        """The campaign engine and the metadata refresh, until cancelled."""
        await asyncio.gather(self.campaigns.run(), self._refresh_loop())

    async def _refresh_loop(self) -> None:
        """Re-sign snapshot and timestamp with the online keys before they expire."""
        while True:
            try:
                repo = UpdateRepository(self.repository_path, Keyring.from_dirs(
                    self.keys, roles=ONLINE_ROLES))  # the controller holds only these
                if repo.initialised:
                    done = await asyncio.to_thread(repo.refresh)
                    if done:
                        log.info("ota_metadata_refreshed roles=%s", ",".join(done))
            except (RepositoryError, KeyFileError, OSError) as exc:
                log.error("ota_refresh_failed error=%s", exc)
            await asyncio.sleep(self.refresh_interval)

    def targets(self) -> list[dict[str, Any]]:
        """What the repository publishes (blocking: reads the TUF metadata)."""
        repo = UpdateRepository(self.repository_path)
        return repo.targets_list() if repo.initialised else []

"""One segment upload in progress, and the durable file writes the archive makes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiepdan.errors import TooLarge
from tiepdan.firmware.core.durable import fsync_dir
from tiepdan.firmware.evidence.receipt import Receipt

if TYPE_CHECKING:
    from tiepdan.controller.archive.store import Archive

CHUNK = 1024 * 1024


class Upload:
    """One segment upload in progress; bytes go to `<name>.part` until the declared size."""

    def __init__(self, archive: Archive, row: Any, path: Path, fd: int,
                 offset: int) -> None:
        self._archive = archive
        self.row = row
        self.path = path
        self._fd = fd
        self.offset = offset
        self.ct_size = int(row["ct_size"])

    def write(self, data: bytes) -> None:
        if self.offset + len(data) > self.ct_size:
            self.close()
            self.path.unlink(missing_ok=True)
            raise TooLarge(code="larger_than_declared",
                           message=f"{self.row['name']}: more than the declared {self.ct_size} "
                               "bytes")
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, self.offset)
            self.offset += written
            view = view[written:]

    def finish(self) -> Receipt | None:
        """The receipt when the segment is whole and verified; None while it is partial."""
        if self.offset < self.ct_size:
            return None
        os.fsync(self._fd)
        self.close()
        return self._archive._finished(self)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._archive._upload_done(self)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def append_durably(path: Path, data: bytes) -> int:
    """Append durably; returns the file's size afterwards."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        created = os.fstat(fd).st_size == 0
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)
    return size

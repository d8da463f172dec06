"""Sealing a recorded segment: age-encrypt it in RAM, then make it durable without a torn file.

The plaintext never touches the disk: the recorder hands over bytes muxed in memory, and only
the age ciphertext is written, to `<name>.tmp`, fsynced, renamed to `<name>` and the directory
fsynced, so after a power cut a segment is either wholly there under its name or a `.tmp`
left for recovery to remove. Every OS call goes through `FileSystem`, the one seam where tests
inject ENOSPC (at write, at rename, or in the manifest it opens).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyrage
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tiepdan.errors import BadInput
from tiepdan.firmware.evidence.manifest import Manifest

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"


class SealError(BadInput):
    """Recipients that cannot be used: the recorder must not start (never record plaintext)."""


class FileSystem:
    """The OS calls recording makes; a test subclass raises OSError(ENOSPC) where it likes."""

    def write(self, path: Path, data: bytes) -> None:
        """Create `path` (never over an existing file), write all of `data`, fsync it."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.ENOSPC, "short write", str(path))
                view = view[written:]
            self.fsync(fd)
        finally:
            os.close(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def rename(self, source: Path, target: Path) -> None:
        os.rename(source, target)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.fsync(fd)
        finally:
            os.close(fd)

    def remove(self, path: Path) -> None:
        os.unlink(path)

    def free_bytes(self, path: Path) -> int:
        """Space an unprivileged writer may still use under `path`."""
        stat = os.statvfs(path)
        return stat.f_bavail * stat.f_frsize

    def open_manifest(self, path: Path, *, device: str, session: str, key: Ed25519PrivateKey,
                      boot_id: str, clock_synced: Callable[[], bool]) -> Manifest:
        return Manifest(path, device=device, session=session, key=key, boot_id=boot_id,
                        clock_synced=clock_synced)


@dataclass(frozen=True)
class Sealed:
    """What the manifest's segment record needs from a sealed segment."""

    name: str
    ct_sha256: str
    ct_size: int
    pt_sha256: str
    pt_size: int


class Sealer:
    """Encrypts to the archive's X25519 recipients; the box holds no key that decrypts."""

    def __init__(self, recipients: Sequence[str], fs: FileSystem | None = None) -> None:
        if not recipients:
            raise SealError("no recipients: refusing to record what nobody may decrypt")
        try:
            self._recipients = [pyrage.x25519.Recipient.from_str(r) for r in recipients]
        except pyrage.RecipientError as exc:
            raise SealError(f"not an age X25519 recipient: {exc}") from None
        self.fs = fs or FileSystem()

    def encrypt(self, plaintext: bytes) -> bytes:
        ciphertext: bytes = pyrage.encrypt(plaintext, self._recipients)
        return ciphertext

    def seal(self, directory: Path, name: str, plaintext: bytes) -> Sealed:
        """Encrypt and store as `directory/name`; blocking (run it in a thread).

        On an OSError nothing is left under `name`; the partial `.tmp` is removed if the disk
        still lets us (else recovery removes it on the next start).
        """
        pt_sha256 = hashlib.sha256(plaintext).hexdigest()
        ciphertext = self.encrypt(plaintext)
        target = directory / name
        if target.exists():
            # A sealed segment is evidence: never replace one, whatever the caller thinks.
            raise FileExistsError(errno.EEXIST, "segment exists", str(target))
        tmp = directory / (name + TMP_SUFFIX)
        try:
            self.fs.write(tmp, ciphertext)
            self.fs.rename(tmp, target)
        except OSError:
            with contextlib.suppress(OSError):
                self.fs.remove(tmp)
            raise
        self.fs.fsync_dir(directory)
        return Sealed(name=name, ct_sha256=hashlib.sha256(ciphertext).hexdigest(),
                      ct_size=len(ciphertext), pt_sha256=pt_sha256, pt_size=len(plaintext))

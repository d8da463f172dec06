"""The TUF repository of update bundles, on disk, as the controller serves it.

Built on python-tuf's `tuf.repository.Repository`: it bumps versions, keeps snapshot and
timestamp in step with targets, and every file is signed through `tuf.api.metadata`. Layout
(consistent snapshots, so a box mid-download never sees a half-published state):

    <repo>/metadata/N.root.json, root.json, timestamp.json, N.snapshot.json, N.targets.json
    <repo>/targets/<sha256>.tiepdan-<version>.tar

Writers (the admin CLI, the controller's timestamp refresher) take `<repo>/.lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository

from tiepdan.errors import Unavailable
from tiepdan.firmware.core.durable import write_atomic
from tiepdan.ota import keys as keyfiles
from tiepdan.ota.bundle import bundle_name, check_version, read_bundle

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (step, done, total)


class RepositoryError(Unavailable, RuntimeError):
    """The repository cannot do what was asked (missing keys, not initialised, ...)."""


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid after it is signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def of(self, role: str) -> timedelta:
        value: timedelta = getattr(self, role)
        return value


@dataclass
class Keyring:
    """The signers at hand, per role; a role without signers cannot be re-signed here."""

    signers: dict[str, list[Signer]] = field(default_factory=dict)

    def add(self, role: str, signer: Signer) -> None:
        self.signers.setdefault(role, []).append(signer)

    def of(self, role: str) -> list[Signer]:
        return self.signers.get(role, [])

    @classmethod
    def from_dirs(cls, keys: Path, root_dirs: list[Path] | None = None,
                  secret: bytes | None = None,
                  roles: tuple[str, ...] = keyfiles.ROLES) -> Keyring:
        ring = cls()
        for role in roles:
            folders = (root_dirs or [keyfiles.role_dir(keys, role)]) if role == "root" \
                else [keyfiles.role_dir(keys, role)]
            for folder in folders:
                for signer in keyfiles.load(folder, role, secret if role in ("root", "targets")
                                            else None):
                    ring.add(role, signer)
        return ring


_INIT: dict[str, type[Signed]] = {"root": Root, "targets": Targets, "snapshot": Snapshot,
                                  "timestamp": Timestamp}


class UpdateRepository(Repository):
    def __init__(self, path: Path, keyring: Keyring | None = None,
                 expiry: Expiry | None = None) -> None:
        self.path = path
        self.metadata_dir = path / "metadata"
        self.targets_dir = path / "targets"
        self.keyring = keyring or Keyring()
        self.expiry = expiry or Expiry()
        # Expiry for the next close() of a role; tests and drills set it to make stale metadata.
        self.expires_override: dict[str, datetime] = {}

    # -- storage (what tuf.repository.Repository asks of an implementation) ----------------------

    def _latest(self, role: str) -> Path | None:
        if role == "timestamp":
            path = self.metadata_dir / "timestamp.json"
            return path if path.exists() else None
        versions = []
        for path in self.metadata_dir.glob(f"*.{role}.json"):
            number = path.name.split(".", 1)[0]
            if number.isdigit():
                versions.append((int(number), path))
        return max(versions)[1] if versions else None

    def open(self, role: str) -> Metadata[Any]:
        path = self._latest(role)
        if path is None:
            md: Metadata[Any] = Metadata(_INIT[role]())  # type: ignore[call-arg]
            md.signed.version = 0  # close() bumps it to 1
            if isinstance(md.signed, Root):
                md.signed.consistent_snapshot = True
            return md
        return Metadata.from_bytes(path.read_bytes())

    def close(self, role: str, md: Metadata[Any]) -> None:
        previous = self.open(role) if role == "root" else None
        md.signed.version += 1
        md.signed.expires = self.expires_override.pop(
            role, datetime.now(UTC).replace(microsecond=0) + self.expiry.of(role))
        md.signatures.clear()
        signers = self.keyring.of(role)
        if not signers:
            raise RepositoryError(f"no {role} key available to sign {role} metadata")
        for signer in signers:
            md.sign(signer, append=True)
        self._check_signatures(role, md, previous)
        data = md.to_bytes(JSONSerializer(compact=False))
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        if role == "timestamp":
            write_atomic(self.metadata_dir / "timestamp.json", data)
        else:
            write_atomic(self.metadata_dir / f"{md.signed.version}.{role}.json", data)
            if role == "root":
                write_atomic(self.metadata_dir / "root.json", data)
        log.info("tuf_signed role=%s version=%d expires=%s", role, md.signed.version,
                 md.signed.expires.isoformat())

    def _check_signatures(self, role: str, md: Metadata[Any],
                          previous: Metadata[Any] | None) -> None:
        """Refuse to write metadata that boxes would reject: better here than in the field."""
        root = md.signed if isinstance(md.signed, Root) else self.root()
        try:
            root.verify_delegate(role, md.signed_bytes, md.signatures)
            if previous is not None and previous.signed.version > 0:
                old = previous.signed
                assert isinstance(old, Root)
                old.verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as exc:
            raise RepositoryError(
                f"{role} metadata v{md.signed.version} lacks a threshold of signatures: {exc}; "
                "mount the missing keys (see --root-keys)") from None

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        return {"targets.json": MetaFile(self.targets().version)}

    @property
    def snapshot_info(self) -> MetaFile:
        return MetaFile(self.snapshot().version)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        with (self.path / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- operations ------------------------------------------------------------------------------

    @property
    def initialised(self) -> bool:
        return self._latest("root") is not None

    def initialise(self, keys: Path, root_dirs: list[Path], *, root_keys: int = 1,
                   root_threshold: int = 1, targets_keys: int = 1,
                   targets_threshold: int = 1) -> None:
        """Create every key and the first version of every role."""
        if self.initialised:
            raise RepositoryError(f"{self.path} already holds a TUF repository")
        if not 1 <= root_threshold <= root_keys or not 1 <= targets_threshold <= targets_keys:
            raise RepositoryError("a threshold must be between 1 and the number of keys")
        secret = keyfiles.passphrase()
        counts = {"root": root_keys, "targets": targets_keys, "snapshot": 1, "timestamp": 1}
        with self.locked():
            for role, count in counts.items():
                for n in range(count):
                    folder = root_dirs[n % len(root_dirs)] if role == "root" \
                        else keyfiles.role_dir(keys, role)
                    self.keyring.add(role, keyfiles.generate(
                        folder, role, secret if role in ("root", "targets") else None))
            with self.edit_root() as root:
                for role in keyfiles.ROLES:
                    for signer in self.keyring.of(role):
                        root.add_key(signer.public_key, role)
                root.roles["root"].threshold = root_threshold
                root.roles["targets"].threshold = targets_threshold
            with self.edit_targets():
                pass
            self.do_snapshot(force=True)
            self.do_timestamp(force=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)

    def add_bundle(self, bundle: Path, *, downgrade: bool = False,
                   progress: Progress | None = None) -> TargetFile:
        """Publish a bundle: copy it under its hash, sign targets, snapshot and timestamp.

        `downgrade` is the admin's signed permission for boxes running a newer version to
        install this one. It holds until the next publish, which clears it.
        """
        manifest, _ = read_bundle(bundle)
        check_version(manifest.version)
        name = bundle_name(manifest.version)
        report = progress or (lambda step, done, total: None)
        with self.locked():
            self.targets_dir.mkdir(parents=True, exist_ok=True)
            size = bundle.stat().st_size
            digest = hashlib.sha256()
            tmp = self.targets_dir / f".{name}.tmp"
            with bundle.open("rb") as src, tmp.open("wb") as dst:
                done = 0
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
                    done += len(chunk)
                    report("copy", done, size)
                dst.flush()
                os.fsync(dst.fileno())
            tmp.replace(self.targets_dir / f"{digest.hexdigest()}.{name}")
            report("targets", 0, 1)
            with self.edit_targets() as targets:
                for other in targets.targets.values():
                    custom = other.unrecognized_fields.get("custom")
                    if isinstance(custom, dict) and custom.get("downgrade"):
                        other.unrecognized_fields["custom"] = {**custom, "downgrade": False}
                target = TargetFile(length=size, hashes={"sha256": digest.hexdigest()},
                                    path=name, unrecognized_fields={"custom": {
                                        "version": manifest.version, "downgrade": downgrade}})
                targets.targets[name] = target
            report("targets", 1, 1)
            report("snapshot", 0, 1)
            self.do_snapshot()
            report("snapshot", 1, 1)
            report("timestamp", 0, 1)
            self.do_timestamp()
            report("timestamp", 1, 1)
        log.info("bundle_published target=%s version=%s bytes=%d downgrade=%s", name,
                 manifest.version, size, downgrade)
        return target

    def remove_target(self, name: str) -> None:
        with self.locked():
            with self.edit_targets() as targets:
                targets.targets.pop(name, None)
            self.do_snapshot()
            self.do_timestamp()

    def rotate(self, role: str, keys: Path, root_dirs: list[Path], *, count: int = 1,
               threshold: int | None = None) -> list[str]:
        """Replace every key of `role` with `count` new ones; returns the new key ids.

        A new root version lists the new keys. For root itself it is signed by the old keys
        and the new ones (boxes walk the chain of roots); the metadata of the role is then
        re-signed with the new keys. Old key files move to `retired/`.
        """
        secret = keyfiles.passphrase()
        with self.locked():
            root = self.root()
            old = set(root.roles[role].keyids)
            folder_for = (lambda n: root_dirs[n % len(root_dirs)]) if role == "root" \
                else (lambda n: keyfiles.role_dir(keys, role))
            fresh = [keyfiles.generate(folder_for(n), role,
                                       secret if role in ("root", "targets") else None)
                     for n in range(count)]
            with self.edit_root() as edited:
                for keyid in old:
                    edited.revoke_key(keyid, role)
                for signer in fresh:
                    edited.add_key(signer.public_key, role)
                edited.roles[role].threshold = threshold or edited.roles[role].threshold
                if edited.roles[role].threshold > count:
                    raise RepositoryError(f"threshold {edited.roles[role].threshold} exceeds "
                                          f"{count} key(s)")
                if role == "root":
                    # Sign with old and new root keys: close() checks both thresholds.
                    self.keyring.signers["root"] = [*self.keyring.of("root"), *fresh]
            self.keyring.signers[role] = list(fresh)
            if role == "targets":
                with self.edit_targets():
                    pass
                self.do_snapshot()
                self.do_timestamp()
            elif role == "snapshot":
                self.do_snapshot(force=True)
                self.do_timestamp()
            elif role == "timestamp":
                self.do_timestamp(force=True)
            for folder in {folder_for(n) for n in range(max(count, len(root_dirs)))}:
                keyfiles.retire(folder, old)
        log.info("keys_rotated role=%s new=%s", role, ",".join(s.public_key.keyid[:12]
                                                               for s in fresh))
        return [s.public_key.keyid for s in fresh]

    def refresh(self, margin: float = 0.5) -> list[str]:
        """Re-sign snapshot and timestamp before they expire (the online keys' job).

        A role is re-signed when less than `margin` of its validity period is left. Returns
        the roles re-signed; warns when root or targets, which need offline keys, run short.
        """
        now = datetime.now(UTC)
        done = []
        with self.locked():
            for role in ("root", "targets"):
                left = self.open(role).signed.expires - now
                if left < timedelta(days=14):
                    log.warning("tuf_expiry_near role=%s left=%s: re-sign it with its keys",
                                role, left)
            if self.snapshot().expires - now < self.expiry.snapshot * margin:
                self.do_snapshot(force=True)
                done.append("snapshot")
            if done or self.timestamp().expires - now < self.expiry.timestamp * margin:
                self.do_timestamp(force=True)
                done.append("timestamp")
        return done

    def targets_list(self) -> list[dict[str, Any]]:
        return [{"path": t.path, "length": t.length, "sha256": t.hashes.get("sha256"),
                 **(t.unrecognized_fields.get("custom") or {})}
                for t in self.targets().targets.values()]

    def trusted_root(self) -> bytes:
        """The root metadata a box is provisioned with (its first trust anchor)."""
        path = self.metadata_dir / "1.root.json"
        if not path.exists():
            raise RepositoryError(f"{self.path} is not initialised (tiepdan-ota keys init)")
        return path.read_bytes()

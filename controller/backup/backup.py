"""`tiepdan-controller backup` / `restore`: what rebuilds the central side, in one file.

A backup holds the issuing CA and the provisioning material, the broker's files, the
controller's TLS identity and Ed25519 signing key (boxes pin its public key), the admin token,
the online TUF keys and the repository's metadata, the database and the archive index with the
closed-session documents. Recordings and OTA bundles are referenced, not copied (they live in
the archive directory and the repository's targets, which have their own storage).

The file is one JSON header line, then an age file (pyrage, X25519) encrypted to the operator's
recipients: whoever steals the backup holds nothing without the offline identity. The header
carries an Ed25519 signature by the controller's signing key over the header and the
ciphertext's SHA-256; `restore` checks it against the public key the operator names (the one
every box pins), and that the signing key inside is that key, before anything is written.
Databases are copied with SQLite's online backup, so a backup of a running controller is
consistent. `restore` refuses a data folder that already holds a database unless told to
replace it. A controller on PostgreSQL (`database.url`) has its databases (the controller's
tables and the archive index's schema) carried in the same places as SQLite files
(`db/controller.db`, `db/archive.db`: every row copied in one consistent read, see
`controller/migrations/transfer.py`), and restored into an empty PostgreSQL database; so a
backup also moves a controller between the two.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyrage
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tiepdan.controller.config import ControllerConfig
from tiepdan.controller.connection import redacted
from tiepdan.controller.enrollment.provisioning import material_for
from tiepdan.controller.migrations.transfer import copy_rows, is_empty, open_database
from tiepdan.controller.signing import SigningKey
from tiepdan.errors import BadInput, Conflict, Corrupt

log = logging.getLogger(__name__)

MAGIC = "tiepdan-backup"
CONTROLLER_DB = "db/controller.db"
VERSION = 1


@dataclass(frozen=True)
class Source:
    """One thing backed up: its name inside the backup and where it lives on this machine."""

    name: str
    path: Path
    only_json: bool = False  # a tree of which only *.json files are kept (TUF metadata)


def sources(config: ControllerConfig) -> list[Source]:
    """Where each part lives, from the configuration (the same on the machine restored to)."""
    material = material_for(config)
    keys = Path(config.ota.keys) if config.ota.keys else config.data_dir / "ota" / "keys"
    archive = Path(config.archive.dir) if config.archive.dir else config.data_dir / "archive"
    return [
        Source("signing.key", config.data_dir / "signing.key"),
        Source("admin.token", config.token_file),
        Source("provisioning", material.dir),
        Source("broker", material.broker.dir),
        Source("tls/ca.pem", material.controller_ca),
        Source("tls/controller.pem", material.controller_cert),
        Source("tls/controller.key", material.controller_key),
        Source("ota/keys/online", keys / "online"),
        Source("ota/repository", config.ota_repository_path, only_json=True),
        Source("archive/closed", archive / "closed"),
        Source("archive/identity.txt", archive / "identity.txt"),
    ]


def _databases(config: ControllerConfig) -> list[Source]:
    archive = Path(config.archive.dir) if config.archive.dir else config.data_dir / "archive"
    return [Source(CONTROLLER_DB, config.data_dir / "controller.db"),
            Source("db/archive.db", archive / "archive.db")]


def _files(source: Source) -> Iterator[tuple[str, Path]]:
    if source.path.is_file():
        yield source.name, source.path
    elif source.path.is_dir():
        for path in sorted(source.path.rglob("*")):
            if path.is_file() and not path.is_symlink() and (
                    not source.only_json or path.suffix == ".json"):
                yield f"{source.name}/{path.relative_to(source.path).as_posix()}", path


def _snapshot_db(path: Path, target: Path) -> None:
    """SQLite's online backup: consistent while the controller writes."""
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def _label(name: str) -> str:
    return "controller" if name == CONTROLLER_DB else "archive"


def _copy_rows(source: str | Path, target: str | Path, label: str, *,
               readonly: bool = False) -> None:
    """Every row of one database into another of the same schema (either may be PostgreSQL;
    a SQLite copy made by an older release is brought to this release's schema on opening)."""
    with contextlib.closing(open_database(source, label, readonly=readonly)) as rows, \
            contextlib.closing(open_database(target, label)) as into:
        copy_rows(rows, into, label=label)


def _check_empty(url: str, label: str) -> None:
    target = open_database(url, label)
    try:
        if not is_empty(target):
            raise Conflict(
                f"the PostgreSQL database {redacted(url)} already holds a controller's data "
                f"({label}); restore into an empty one (dropdb, then createdb with the "
                "controller's role as owner)")
    finally:
        target.close()


def _header_bytes(header: dict[str, object]) -> bytes:
    return json.dumps({k: v for k, v in header.items() if k != "signature"},
                      sort_keys=True, separators=(",", ":")).encode()


def backup(config: ControllerConfig, out: Path, recipients: list[str]) -> dict[str, object]:
    """Write the backup to `out` (mode 0600); returns its header."""
    if not recipients:
        raise BadInput("backup needs at least one age recipient (age1...): the archivist's or "
                       "the admins' offline identity")
    try:
        parsed = [pyrage.x25519.Recipient.from_str(r) for r in recipients]
    except Exception as exc:
        raise BadInput(f"not an age X25519 recipient: {exc}") from None
    signing_path = config.data_dir / "signing.key"
    if not signing_path.exists():
        raise BadInput(f"no controller signing key at {signing_path}: nothing to back up here")
    signing = SigningKey(signing_path)
    buffer = io.BytesIO()
    count = 0
    with tempfile.TemporaryDirectory(prefix="tiepdan-backup-") as tmp, \
            tarfile.open(fileobj=buffer, mode="w") as tar:
        for db in _databases(config):
            copy = Path(tmp) / db.path.name
            if config.database.url:
                _copy_rows(config.database.url, copy, _label(db.name), readonly=True)
            elif db.path.exists():
                _snapshot_db(db.path, copy)
            else:
                continue
            tar.add(copy, arcname=db.name)
            count += 1
        for source in sources(config):
            for name, path in _files(source):
                tar.add(path, arcname=name)
                count += 1
    ciphertext: bytes = pyrage.encrypt(buffer.getvalue(), parsed)
    header: dict[str, object] = {
        "format": MAGIC, "version": VERSION, "controller": config.controller.id,
        "created": time.time(), "files": count,
        "sha256": hashlib.sha256(ciphertext).hexdigest(),
        "signer": base64.b64encode(signing.public_raw()).decode(),
    }
    header["signature"] = base64.b64encode(signing.sign(_header_bytes(header))).decode()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    fd = os.open(tmp_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(json.dumps(header, sort_keys=True).encode() + b"\n")
        handle.write(ciphertext)
        handle.flush()
        os.fsync(handle.fileno())
    tmp_out.replace(out)
    log.info("backup_written path=%s files=%d bytes=%d", out, count, out.stat().st_size)
    return header


def read_verified(path: Path, signer: str) -> tuple[dict[str, object], bytes]:
    """The header and ciphertext, once the signature checks against `signer` (base64 of the
    controller's raw Ed25519 public key, as boxes pin it)."""
    data = path.read_bytes()
    line, _, ciphertext = data.partition(b"\n")
    try:
        header = json.loads(line)
        assert isinstance(header, dict) and header.get("format") == MAGIC
        signature = base64.b64decode(str(header["signature"]))
    except Exception:
        raise Corrupt(f"{path} is not a tiepdan backup") from None
    if header.get("version") != VERSION:
        raise BadInput(f"backup version {header.get('version')} is not {VERSION}")
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(signer))
    except Exception:
        raise BadInput("--signer must be the controller's public key, base64 of 32 bytes") \
            from None
    try:
        key.verify(signature, _header_bytes(header))
    except InvalidSignature:
        raise Corrupt("the backup's signature does not check against the given controller "
                      "key: not made by that controller, or altered") from None
    if hashlib.sha256(ciphertext).hexdigest() != header["sha256"]:
        raise Corrupt("the backup's content does not match its signed hash: altered or "
                      "truncated")
    return header, ciphertext


def restore(config: ControllerConfig, path: Path, identity: Path, signer: str,
            replace: bool = False) -> dict[str, object]:
    """Check, decrypt and put every part back where `config` says it lives."""
    header, ciphertext = read_verified(path, signer)
    if not config.database.url and (config.data_dir / "controller.db").exists() and not replace:
        raise Conflict(f"{config.data_dir} already holds a controller database; restore onto "
                       f"a fresh machine, or pass --replace to overwrite it")
    try:
        identities = [pyrage.x25519.Identity.from_str(line.strip())
                      for line in identity.read_text().splitlines()
                      if line.strip() and not line.startswith("#")]
        plaintext: bytes = pyrage.decrypt(ciphertext, identities)
    except Exception as exc:
        raise BadInput(f"cannot decrypt the backup with {identity}: {exc}") from None
    places = {s.name: s for s in [*sources(config), *_databases(config)]}
    with tempfile.TemporaryDirectory(prefix="tiepdan-restore-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(plaintext), mode="r") as tar:
            tar.extractall(tmp, filter="data")
        staged = Path(tmp)
        key_file = staged / "signing.key"
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw) \
            if isinstance(key, Ed25519PrivateKey) else b""
        if base64.b64encode(raw).decode() != signer:
            raise Corrupt("the signing key inside the backup is not the key that signed it")
        for db in _databases(config):  # an old WAL must not replay over the restored file
            for suffix in ("-wal", "-shm"):
                db.path.with_name(db.path.name + suffix).unlink(missing_ok=True)
        written = 0
        restored = [db for db in _databases(config) if (staged / db.name).is_file()] \
            if config.database.url else []
        for db in restored:  # both empty before either is written
            _check_empty(config.database.url, _label(db.name))
        for db in restored:
            _copy_rows(staged / db.name, config.database.url, _label(db.name))
            (staged / db.name).unlink()
            written += 1
        for file in sorted(p for p in staged.rglob("*") if p.is_file()):
            name = file.relative_to(staged).as_posix()
            target = _target(places, name)
            if target is None:
                raise Corrupt(f"unexpected file in backup: {name}")
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copyfile(file, target)
            mode = file.stat().st_mode & 0o755  # as backed up (less any write for others)
            os.chmod(target, mode & 0o700 if _private(name) else mode)
            written += 1
    log.info("backup_restored path=%s files=%d controller=%s", path, written,
             header.get("controller"))
    return {**header, "restored": written}


def _target(places: dict[str, Source], name: str) -> Path | None:
    if name in places:
        return places[name].path
    for source in places.values():
        if name.startswith(source.name + "/"):
            return source.path / name[len(source.name) + 1:]
    return None


def _private(name: str) -> bool:
    """Keys, tokens, databases and the broker's dynamic-security file are owner-only whatever
    the backup says; the rest keeps the mode it was backed up with."""
    base = name.rsplit("/", 1)[-1]
    return (name.startswith(("db/", "ota/keys/")) or base.endswith((".key", ".token"))
            or base in ("identity.txt", "dynamic-security.json") or "dynsec" in base)

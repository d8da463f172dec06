"""kill -9 at random moments during recording: nothing sealed is lost, nothing plain is left.

A real process (recover, then record the box's four tracks in real time, 0.5 s segments) is
killed with SIGKILL at random moments: while starting up and recovering, mid-segment, while
sealing. After every kill the files on disk are checked (each listed segment decrypts and
matches its hashes, every file is the manifest or age ciphertext, all but the open segment
and the one being sealed are listed), and the next process's recovery is checked at the end.
`--soak` runs ten times the rounds.
"""

from __future__ import annotations

import itertools
import os
import random
import select
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.recording.rec_support import (
    CRASH_DEVICE,
    Archive,
    decrypt_segment,
    verified_records,
)
from tiepdan.firmware.evidence.identity import Identity
from tiepdan.firmware.evidence.manifest import FILENAME, Record, verify_chain
from tiepdan.firmware.evidence.sealer import FileSystem
from tiepdan.firmware.recording.session import recover_sessions

ROOT = Path(__file__).resolve().parents[2]
SESSION = "s-crash"
ROUNDS = 30
AGE_MAGIC = b"age-encryption.org/v1\n"


class Harness:
    def __init__(self, tmp_path: Path, archive: Archive) -> None:
        self.directory = tmp_path / "recordings"
        self.state = tmp_path / "state"
        self.archive = archive
        self.log = (tmp_path / "harness.log").open("ab")
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []

    def start(self) -> None:
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.recording.rec_support", str(self.directory),
             str(self.state), SESSION, self.archive.recipient],
            stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT)

    def read_until(self, prefix: str, timeout: float = 20.0) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buffer = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.05)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                assert chunk, f"harness exited: {self.proc.poll()}"
                buffer += chunk
                *done, partial = buffer.split(b"\n")
                buffer = partial
                self.lines += [line.decode() for line in done]
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
        raise AssertionError(f"harness never said {prefix!r}: {self.lines}")

    def drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while select.select([self.proc.stdout], [], [], 0)[0]:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                break
            self.lines += chunk.decode(errors="replace").splitlines()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no finally, no flush, no atexit
        self.proc.wait()
        self.drain()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def check_disk(directory: Path, archive: Archive, key: Ed25519PrivateKey,
               verified: set[str]) -> list[Record]:
    session = directory / SESSION
    if not session.exists():
        return []
    data = (session / FILENAME).read_bytes() if (session / FILENAME).exists() else b""
    lines = data.split(b"\n")[:-1]
    records, problems = verify_chain(lines, device=CRASH_DEVICE, session=SESSION,
                                     key_for=lambda _: key.public_key())
    assert not problems, [str(p) for p in problems]
    for record in records:
        if record.segment is not None and record.segment.name not in verified:
            decrypt_segment(session, record, archive)
            verified.add(record.segment.name)
    for path in session.iterdir():  # no plaintext: the manifest, and age ciphertext only
        if path.name == FILENAME:
            continue
        assert path.name.endswith((".mkv.age", ".mkv.age.tmp")), path.name
        head = path.read_bytes()[:len(AGE_MAGIC)]
        assert AGE_MAGIC.startswith(head) if len(head) < len(AGE_MAGIC) else \
            head == AGE_MAGIC, f"{path.name} is not age ciphertext"
    return records


def test_kill_9_during_recording_loses_at_most_the_open_segment(
        tmp_path: Path, soak: bool) -> None:
    archive = Archive.create()
    harness = Harness(tmp_path, archive)
    key = Identity(harness.state).signing_key()
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    verified: set[str] = set()
    rounds = ROUNDS * (10 if soak else 1)
    recording_runs = 0
    for round_ in range(rounds):
        harness.start()
        if rng.random() < 0.15:  # during start-up, recovery or the `start` record
            time.sleep(rng.uniform(0.0, 0.6))
        else:
            harness.read_until("recording")
            recording_runs += 1
            time.sleep(rng.uniform(0.05, 1.6))
        harness.kill()
        opened = [int(line.split()[1]) for line in harness.lines
                  if line.startswith("open ") and line.split()[1] != "None"]
        open_index = max(opened) if opened else None
        records = check_disk(harness.directory, archive, key, verified)
        if open_index is not None:
            # Everything before the open segment and the one being sealed is listed.
            listed = {r.segment.index for r in records if r.segment is not None}
            run_start = max(i for i, r in enumerate(records) if r.kind == "start")
            first = int(records[run_start].detail["first_index"])
            missing = set(range(first, open_index - 1)) - listed
            assert not missing, f"seed {seed} round {round_}: sealed segments lost: {missing}"
    # One more start recovers the last kill, is killed in turn, and this process recovers.
    harness.start()
    harness.read_until("recording")
    time.sleep(0.3)
    harness.kill()
    recover_sessions(harness.directory, FileSystem(), device=CRASH_DEVICE, key=key,
                     boot_id="test", clock_synced=lambda: False)
    records = verified_records(harness.directory / SESSION, CRASH_DEVICE, SESSION, key)
    for record in records:
        if record.segment is not None and record.segment.name not in verified:
            decrypt_segment(harness.directory / SESSION, record, archive)
    kinds = [r.kind for r in records]
    starts = [i for i, k in enumerate(kinds) if k == "start"]
    assert len(starts) >= recording_runs + 1
    assert kinds[-1] == "recovered"
    for previous, current in zip(starts, [*starts[1:], len(kinds)], strict=True):
        assert "recovered" in kinds[previous:current], f"seed {seed}: crash not recovered"
        run = [r for r in records[previous:current] if r.segment is not None]
        for a, b in itertools.pairwise(run):  # within a run, no hole in the timeline
            assert a.detail["end_ms"] == b.detail["start_ms"], f"seed {seed}: gap in a run"
    assert kinds.count("segment") >= recording_runs // 2
    log = (tmp_path / "harness.log").read_text(errors="replace")
    assert log.count("recording_recovered") >= len(starts) - 1
    assert not list((harness.directory / SESSION).glob("*.tmp"))

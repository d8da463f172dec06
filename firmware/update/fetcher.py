"""HTTP for the box's TUF client: bundle downloads that resume after a cut.

python-tuf's `FetcherInterface` only asks for a stream of bytes; `Updater.download_target`
still counts them against the signed length and checks the signed hash. This fetcher keeps what
it received of a target in a partial file named after the URL (with consistent snapshots the URL
carries the target's hash, so a partial never mixes two files) and, on the next try, replays it
and asks the server for the rest with an HTTP Range request. A partial that fails TUF's checks
is thrown away by the caller (`discard`).
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import urllib3
from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

log = logging.getLogger(__name__)

CHUNK = 64 * 1024  # also the grain of progress reports and of what a cut can lose


class Stopped(exceptions.DownloadError):
    """The agent is stopping; the partial file is kept for the next run."""

    stopping = True


class ResumableFetcher(FetcherInterface):
    def __init__(self, partial_dir: Path, *, targets_prefix: str, timeout: float = 30.0,
                 on_bytes: Callable[[int], None] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.partial_dir = partial_dir
        self.targets_prefix = targets_prefix
        self.timeout = timeout
        self.on_bytes = on_bytes
        self.stop = threading.Event()
        self.resumed_from = 0  # bytes replayed from disk by the last target download
        self.last_target_url = ""
        self._pool = urllib3.PoolManager(
            retries=False, timeout=urllib3.Timeout(connect=timeout, read=timeout),
            headers={"User-Agent": "tiepdan-ota"}, ssl_context=tls)

    def partial_path(self, url: str) -> Path:
        return self.partial_dir / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".part")

    def discard(self, url: str) -> None:
        if url:
            self.partial_path(url).unlink(missing_ok=True)

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(self.targets_prefix):
            return self._stream(self._get(url, {}))
        return self._fetch_target(url)

    def _get(self, url: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        if self.stop.is_set():
            raise Stopped("stopping")
        try:
            response = self._pool.request("GET", url, headers=headers, preload_content=False)
        except urllib3.exceptions.TimeoutError as exc:
            raise exceptions.SlowRetrievalError(f"{url}: {exc}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise exceptions.DownloadError(f"{url}: {exc}") from exc
        if response.status >= 400 and response.status != 416:
            response.drain_conn()  # an unread error body would poison the next request
            response.release_conn()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
        return response

    def _stream(self, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        complete = False
        try:
            for chunk in response.stream(CHUNK):
                if self.stop.is_set():
                    raise Stopped("stopping")
                yield chunk
            complete = True
        except urllib3.exceptions.TimeoutError as exc:
            raise exceptions.SlowRetrievalError(str(exc)) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise exceptions.DownloadError(f"connection lost: {exc}") from exc
        finally:
            if not complete:
                response.close()  # abandoned mid-body: the connection cannot be reused
            response.release_conn()

    def _fetch_target(self, url: str) -> Iterator[bytes]:
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        partial = self.partial_path(url)
        self.last_target_url = url
        have = partial.stat().st_size if partial.exists() else 0
        answer = self._get(url, {"Range": f"bytes={have}-"} if have else {})
        response: urllib3.BaseHTTPResponse | None = answer
        if answer.status == 416:  # we hold at least the whole file: let TUF judge it
            answer.drain_conn()
            answer.release_conn()
            response = None
        elif answer.status != 206:
            have = 0  # the server ignored the range: start over
        self.resumed_from = have
        if have:
            log.info("download_resumed url=%s from_byte=%d", url, have)
        return self._replay_and_append(partial, have, response)

    def _replay_and_append(self, partial: Path, have: int,
                           response: urllib3.BaseHTTPResponse | None) -> Iterator[bytes]:
        mode = "r+b" if have else "wb"
        with partial.open(mode) as out:
            if have:
                if self.on_bytes is not None:
                    self.on_bytes(have)
                while chunk := out.read(CHUNK):
                    yield chunk
                out.seek(have)
                out.truncate()
            if response is None:
                return
            for chunk in self._stream(response):
                out.write(chunk)
                out.flush()
                if self.on_bytes is not None:
                    self.on_bytes(len(chunk))
                yield chunk

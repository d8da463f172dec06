"""A small client for the controller's admin API, for CLIs that run beside the controller."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from tiepdan.controller.config import ControllerConfig
from tiepdan.errors import TiepdanError


class ApiError(TiepdanError, RuntimeError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})")
        self.status = status
        self.code = code


class ApiClient:
    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout

    @classmethod
    def from_config(cls, config: ControllerConfig) -> ApiClient:
        """A person's own token from $TIEPDAN_TOKEN, else the admin token file."""
        if os.environ.get("TIEPDAN_TOKEN"):
            return cls(config.api_url, os.environ["TIEPDAN_TOKEN"].strip())
        try:
            token = config.token_file.read_text().strip()
        except OSError as exc:
            raise ApiError(0, "no_token", f"cannot read the admin token {config.token_file}: "
                                          f"{exc.strerror}; has the controller started?") from None
        return cls(config.api_url, token)

    def call(self, method: str, path: str, body: Any = None,
             query: dict[str, str] | None = None, timeout: float | None = None) -> Any:
        url = self.url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self._token}", "Content-Type": "application/json",
        })
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as reply:
                return json.loads(reply.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read())["error"]
            except (ValueError, KeyError, TypeError):
                detail = {"code": "http_error", "message": exc.reason}
            raise ApiError(exc.code, detail["code"], detail["message"]) from None
        except urllib.error.URLError as exc:
            raise ApiError(0, "unreachable", f"controller API {self.url} unreachable: "
                                             f"{exc.reason}") from None

    def get(self, path: str, **query: str) -> Any:
        return self.call("GET", path, query=query or None)

"""The console over HTTPS: the controller's HTTP app served a second time, with TLS, on the
address people's browsers reach (browsers give a page the camera only over HTTPS, except on
localhost). The plain listener stays on loopback for the CLIs."""

from __future__ import annotations

import logging
import ssl

from aiohttp import web

from tiepdan.controller.config import ConsoleSection
from tiepdan.errors import BadInput

log = logging.getLogger(__name__)


class HttpsError(BadInput):
    """The certificate or key cannot be used (named in the message)."""


def server_context(config: ConsoleSection) -> ssl.SSLContext | None:
    """The TLS context for `console.cert_file`/`key_file`, or None when HTTPS is off."""
    if not config.cert_file and not config.key_file:
        return None
    if not config.cert_file or not config.key_file:
        raise HttpsError("console.cert_file and console.key_file go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.cert_file, config.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise HttpsError(f"console certificate {config.cert_file} / key {config.key_file}: "
                         f"{exc}") from None
    return context


async def start_https(runner: web.AppRunner, config: ConsoleSection) -> int | None:
    """Serve the app over HTTPS too when configured; returns the bound port (None: off)."""
    context = server_context(config)
    if context is None:
        return None
    site = web.TCPSite(runner, config.https_host, config.https_port, ssl_context=context)
    await site.start()
    port = int(runner.addresses[-1][1])  # the site just started is the last one
    log.info("console_https host=%s port=%d", config.https_host, port)
    return port

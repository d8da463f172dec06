"""`tiepdan-agent` / `python -m tiepdan.firmware`: run the box agent."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from tiepdan import __version__
from tiepdan.firmware.agent.config import DEFAULT_PATH, load_config
from tiepdan.firmware.core import logs
from tiepdan.firmware.core.config import ConfigError

log = logging.getLogger("tiepdan.firmware")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tiepdan-agent", description=__doc__)
    parser.add_argument("--config", type=Path,
                        default=Path(os.environ.get("TIEPDAN_CONFIG", DEFAULT_PATH)),
                        help="agent configuration (TOML); default %(default)s or $TIEPDAN_CONFIG")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration and exit")
    parser.add_argument("--version", action="version", version=f"tiepdan {__version__}")
    args = parser.parse_args(argv)
    logs.setup()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        log.error("config_invalid %s", exc)
        return 2
    if args.check_config:
        log.info("config_ok path=%s device=%s", args.config, config.device.id)
        return 0
    logs.setup(config.log.level, config.log.format)

    from tiepdan.board.profile import BoardError
    from tiepdan.firmware.agent.agent import Agent, Exit
    from tiepdan.firmware.core.mqtt import LinkError

    async def run() -> Exit:
        agent = Agent(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.request_stop)
        return await agent.run()

    try:
        outcome = asyncio.run(run())
    except BoardError as exc:
        log.error("board_unavailable error=%s", exc)
        return 3
    except LinkError as exc:
        log.error("mqtt_unusable error=%s", exc)
        from tiepdan.firmware.screen.unenrolled import wait_for_enrollment

        if not wait_for_enrollment(config):
            return 3
        outcome = Exit.RESTART  # enrolled meanwhile: start again with the certificate
    if outcome == Exit.RESTART:
        # Same PID, so systemd's Type=notify tracking and the demo's supervision both hold.
        log.info("agent_reexec argv=%s", " ".join(sys.orig_argv))
        sys.stderr.flush()
        os.execv(sys.executable, sys.orig_argv)
    return int(outcome)


if __name__ == "__main__":
    sys.exit(main())

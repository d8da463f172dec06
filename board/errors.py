"""The one exception the board layer raises for hardware and configuration faults."""


class BoardError(Exception):
    """A board part is missing, misconfigured or failed; the message says what to fix."""

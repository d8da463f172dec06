"""The one exception the board layer raises for hardware and configuration faults."""

from tiepdan.errors import Unavailable


class BoardError(Unavailable):
    """A board part is missing, misconfigured or failed; the message says what to fix."""

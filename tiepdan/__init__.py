"""tiepdan: online citizen reception boxes for commune halls, and the central side that runs them.

The top-level folders board/, firmware/, controller/, ota/, provisioning/ and tools/ are linked
here so that they install as `tiepdan.<folder>` and never as a bare top-level `board`.
"""

__version__ = "0.1.0"

"""Packaging (issue 12): one artifact per target, the box's Debian package, the controller's."""

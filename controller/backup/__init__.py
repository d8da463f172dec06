"""Backup and restore of what rebuilds the central side (see `backup.py`)."""

"""The central side: registry, sessions, media bridge, archive, OTA campaigns, API."""

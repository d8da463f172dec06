"""Where the `screen` gettext catalog lives, and the box's translator for a language."""

from __future__ import annotations

import gettext
from pathlib import Path

from tiepdan.firmware.core.i18n import DEFAULT_LANGUAGE, translator

__all__ = ["DOMAIN", "LOCALEDIR", "screen_translator"]

DOMAIN = "screen"
LOCALEDIR = Path(__file__).resolve().parent / "locale"


def screen_translator(language: str = DEFAULT_LANGUAGE) -> gettext.NullTranslations:
    return translator(LOCALEDIR, DOMAIN, language)

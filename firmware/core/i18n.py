"""Translations from gettext catalogs; Vietnamese by default, English beside it."""

from __future__ import annotations

import gettext
from pathlib import Path

LANGUAGES = ("vi", "en")
DEFAULT_LANGUAGE = "vi"


def translator(localedir: Path, domain: str, language: str = DEFAULT_LANGUAGE
               ) -> gettext.NullTranslations:
    return gettext.translation(domain, localedir, languages=[language], fallback=True)

"""Translations from gettext catalogs; Vietnamese by default, English beside it.

Catalogs are Babel-managed `.po` files compiled to `.mo` under
`<localedir>/<language>/LC_MESSAGES/<domain>.mo`. An unknown language is refused with a clear
`ValueError` (a configuration mistake must be seen, not silently shown in another language); a
missing catalog for a known language is logged and falls back to the message ids (English), so a
broken install still shows words rather than nothing.
"""

from __future__ import annotations

import gettext
import logging
from pathlib import Path

__all__ = ["DEFAULT_LANGUAGE", "LANGUAGES", "translator"]

log = logging.getLogger(__name__)

LANGUAGES = ("vi", "en")
DEFAULT_LANGUAGE = "vi"


def translator(localedir: Path, domain: str, language: str = DEFAULT_LANGUAGE
               ) -> gettext.NullTranslations:
    """The catalog of `domain` in `language`; ValueError for a language we do not ship."""
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; expected one of {', '.join(LANGUAGES)}")
    try:
        return gettext.translation(domain, localedir=str(localedir), languages=[language])
    except OSError:
        log.error("i18n_catalog_missing domain=%s language=%s dir=%s", domain, language,
                  localedir)
        return gettext.NullTranslations()

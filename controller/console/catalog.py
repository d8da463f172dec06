"""The console's gettext catalogs: extract every message, merge into each language, compile.

    python -m tiepdan.controller.console.catalog        # after changing a message

Messages are English in the code and templates; `locale/vi/.../console.po` holds Vietnamese,
`locale/en/...` stays untranslated (English is the message itself). The `.mo` files are built
from the `.po` files and committed, so an install needs no build step; a test checks both are
complete and current.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

from tiepdan.controller.console.rendering import DOMAIN, HERE, LOCALE_DIR
from tiepdan.firmware.core.i18n import LANGUAGES

METHODS = [("**.py", "python"), ("templates/**.html", "jinja2.ext:babel_extract")]
OPTIONS = {"templates/**.html": {"extensions": "jinja2.ext.i18n", "trim_blocks": "True",
                                 "lstrip_blocks": "True"}}


def extract() -> Catalog:
    """Every message the console shows, from its Python code and its templates."""
    template = Catalog(project="tiepdan-console", domain=DOMAIN)
    for filename, lineno, message, comments, _context in extract_from_dir(
            HERE, METHODS, OPTIONS, keywords={"_": None, "gettext": None}):
        template.add(message, None, [(filename, lineno)], auto_comments=comments)
    return template


def po_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


def read(lang: str) -> Catalog:
    path = po_path(lang)
    if not path.exists():
        return Catalog(locale=lang, domain=DOMAIN)
    with path.open("rb") as f:
        return read_po(f, locale=lang, domain=DOMAIN)


def compiled(catalog: Catalog) -> bytes:
    out = io.BytesIO()
    write_mo(out, catalog)
    return out.getvalue()


def update() -> dict[str, list[str]]:
    """Merge the extracted messages into every language's catalog; returns the untranslated."""
    template = extract()
    missing: dict[str, list[str]] = {}
    for lang in LANGUAGES:
        catalog = read(lang)
        catalog.update(template, no_fuzzy_matching=True)
        path = po_path(lang)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            write_po(f, catalog, width=100, omit_header=False, sort_output=True,
                     ignore_obsolete=True)
        path.with_suffix(".mo").write_bytes(compiled(catalog))
        missing[lang] = [str(m.id) for m in catalog if m.id and not m.string]
    return missing


def main() -> int:
    missing = update()
    for message in missing["vi"]:
        sys.stderr.write(f"untranslated (vi): {message}\n")
    return 1 if missing["vi"] else 0


if __name__ == "__main__":
    sys.exit(main())

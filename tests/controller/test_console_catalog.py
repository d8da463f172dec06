"""Every message the console shows has a Vietnamese translation, and the shipped .mo is current."""

from __future__ import annotations

import pytest

from tiepdan.controller.console import catalog
from tiepdan.firmware.core.i18n import LANGUAGES


def test_every_message_is_translated_to_vietnamese() -> None:
    wanted = {m.id for m in catalog.extract() if m.id}
    assert len(wanted) > 100
    vi = catalog.read("vi")
    missing = sorted(str(i) for i in wanted if not (vi.get(i) and vi.get(i).string))
    assert missing == [], "run python -m tiepdan.controller.console.catalog and translate"
    fuzzy = [str(m.id) for m in vi if m.id and m.fuzzy]
    assert fuzzy == []


def test_translations_keep_their_placeholders() -> None:
    problems = [(str(m.id), [str(e) for e in errors])
                for m, errors in catalog.read("vi").check() if errors]
    assert problems == []


@pytest.mark.parametrize("lang", LANGUAGES)
def test_compiled_catalogs_are_current(lang: str) -> None:
    shipped = catalog.po_path(lang).with_suffix(".mo").read_bytes()
    assert shipped == catalog.compiled(catalog.read(lang)), \
        "run python -m tiepdan.controller.console.catalog"

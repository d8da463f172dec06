"""Every string on the screen comes from the `screen` catalog, translated, in step with the code.

The catalogs are maintained with Babel; the commands are in README, "The hall's screen"
(`pybabel extract`, `update`, `compile`).
The compiled .mo files are committed (the box installs a wheel and has no Babel), so a test
keeps them equal to the .po files.
"""

from __future__ import annotations

import gettext
import io
import re
import string
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from tiepdan.firmware.core.i18n import DEFAULT_LANGUAGE, LANGUAGES, translator
from tiepdan.firmware.screen.catalog import DOMAIN, LOCALEDIR, screen_translator

SOURCE = Path(__file__).resolve().parents[2] / "firmware" / "screen"
KEYWORDS = {"_": None, "gettext": None, "N_": None}


def code_messages() -> set[str]:
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
            str(SOURCE), keywords=KEYWORDS, comment_tags=()):
        assert isinstance(message, str), f"plural or odd message in {_file}:{_line}"
        found.add(message)
    return found


def catalog(language: str):  # type: ignore[no-untyped-def]
    with open(LOCALEDIR / language / "LC_MESSAGES" / f"{DOMAIN}.po", "rb") as handle:
        return read_po(handle, locale=language)


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def test_the_loader_defaults_to_vietnamese_and_refuses_unknown_languages(tmp_path: Path) -> None:
    assert LANGUAGES == ("vi", "en") and DEFAULT_LANGUAGE == "vi"
    assert screen_translator().gettext("Session ended") == "Phiên đã kết thúc"
    assert screen_translator("en").gettext("Session ended") == "Session ended"
    with pytest.raises(ValueError, match="unknown language 'fr'; expected one of vi, en"):
        translator(LOCALEDIR, DOMAIN, "fr")
    missing = translator(tmp_path, DOMAIN, "vi")  # a broken install still shows words
    assert isinstance(missing, gettext.NullTranslations)
    assert missing.gettext("Session ended") == "Session ended"


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_message_in_the_code_is_translated(language: str) -> None:
    wanted = code_messages()
    assert len(wanted) > 30
    entries = {m.id: m for m in catalog(language) if m.id}
    missing = sorted(wanted - set(entries))
    assert not missing, f"not in {language}/screen.po (run pybabel extract + update): {missing}"
    stale = sorted(set(entries) - wanted)
    assert not stale, f"{language}/screen.po has messages the code no longer uses: {stale}"
    for message in entries.values():
        assert message.string, f"{language}: untranslated {message.id!r}"
        assert not message.fuzzy, f"{language}: fuzzy {message.id!r}"
        assert fields(message.string) == fields(message.id), \
            f"{language}: placeholders differ in {message.string!r}"


def test_vietnamese_is_really_vietnamese() -> None:
    entries = [m for m in catalog("vi") if m.id]
    vietnamese = re.compile("[ăâđêôơưàảãáạằẳẵắặầẩẫấậèẻẽéẹềểễếệìỉĩíịòỏõóọồổỗốộờởỡớợùủũúụừửữứựỳỷỹýỵ]",
                            re.IGNORECASE)
    for message in entries:
        assert message.string != message.id or message.id.startswith("{"), message.id
    assert sum(bool(vietnamese.search(m.string)) for m in entries) >= len(entries) - 2


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_committed_mo_files_are_compiled_from_the_po_files(language: str) -> None:
    expected = io.BytesIO()
    write_mo(expected, catalog(language))
    compiled = gettext.GNUTranslations(io.BytesIO(expected.getvalue()))
    with open(LOCALEDIR / language / "LC_MESSAGES" / f"{DOMAIN}.mo", "rb") as handle:
        committed = gettext.GNUTranslations(handle)
    assert committed._catalog == compiled._catalog, (  # type: ignore[attr-defined]
        f"{language}/screen.mo is stale: run pybabel compile -D screen -d firmware/screen/locale")

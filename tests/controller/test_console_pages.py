"""Every page: renders for its roles, in Vietnamese by default and English on the switch, with
every form control labelled for screen readers and one heading to name the page."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from tests.controller.console_support import Browser, announce_all, console_controller
from tiepdan.tools.broker import Mosquitto

BOXES = {"tinh-nghe-an": ("nghe-an", ""), "xa-nghi-loc": ("nghe-an", "nghi-loc")}


class Controls(HTMLParser):
    """Form controls without a label, and the page's h1 count."""

    def __init__(self) -> None:
        super().__init__()
        self.labelled_ids: set[str] = set()
        self.controls: list[dict[str, str | None]] = []
        self.in_label = 0
        self.h1 = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "label":
            self.in_label += 1
            if a.get("for"):
                self.labelled_ids.add(str(a["for"]))
        elif tag == "h1":
            self.h1 += 1
        elif tag in ("input", "select", "textarea") and a.get("type") != "hidden":
            self.controls.append({**a, "wrapped": "yes" if self.in_label else None})

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self.in_label -= 1

    def unlabelled(self) -> list[dict[str, str | None]]:
        return [c for c in self.controls if not c.get("wrapped") and not c.get("aria-label")
                and c.get("id") not in self.labelled_ids]


async def test_every_page_renders_labelled_in_vietnamese_and_in_english(
        tmp_path: Path, broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        await announce_all(c, BOXES)
        session = await c.sessions.open("tinh-nghe-an", ["xa-nghi-loc"], title="Tiếp dân",
                                        at=4102444800.0)
        await b.login("quantri")
        pages = ["/fleet", "/fleet/xa-nghi-loc", "/sessions", "/sessions/new",
                 f"/sessions/{session.id}", f"/sessions/{session.id}/edit", "/updates",
                 "/updates/history", "/archive", "/provisioning", "/provisioning/labels",
                 "/people", "/audit"]
        for path in pages:
            status, page = await b.get(path)
            assert status == 200, (path, page[:300])
            assert '<html lang="vi">' in page and "{{" not in page, path
            parser = Controls()
            parser.feed(page)
            assert parser.unlabelled() == [], (path, parser.unlabelled())
            assert parser.h1 == 1, path
            assert 'href="#main"' in page  # skip link for keyboard users
        status, page = await b.post("/lang", {"lang": "en", "next": "/fleet"}, csrf=False)
        assert status == 200 and '<html lang="en">' in page and "Fleet" in page
        assert "Đội hộp" not in page
        status, page = await b.post("/lang", {"lang": "fr", "next": "/fleet"}, csrf=False)
        assert status == 400
        status, page = await b.post("/lang", {"lang": "vi", "next": "https://evil.example/"},
                                    csrf=False)
        assert status == 200 and '<html lang="vi">' in page  # stayed on this site

"""Server-rendered pages: Jinja2 templates with gettext catalogs, Vietnamese by default.

One Jinja2 environment per language (the catalogs are installed once, not per request). Times
are shown in the console's time zone (Asia/Ho_Chi_Minh) in Vietnamese order: 14:30 03/12/2026.
"""

from __future__ import annotations

import datetime as dt
import gettext
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web
from babel.dates import format_datetime

from tiepdan.controller.config import ConsoleSection
from tiepdan.controller.http.auth import CALLER
from tiepdan.controller.people.caller import Caller
from tiepdan.firmware.core.i18n import LANGUAGES, translator

HERE = Path(__file__).resolve().parent
LOCALE_DIR = HERE / "locale"
TEMPLATES = HERE / "templates"
DOMAIN = "console"
LANG_COOKIE = "tiepdan_lang"

# The sections of the console, in menu order: (path, label, action that may see it).
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("/fleet", "Fleet", "fleet.view"),
    ("/sessions", "Sessions", "sessions.view"),
    ("/updates", "Updates", "updates.view"),
    ("/archive", "Archive", "archive.view"),
    ("/provisioning", "Provisioning", "provisioning.view"),
    ("/people", "People", "people.manage"),
    ("/audit", "Audit log", "audit.view"),
)


# CLDR patterns made only of numbers, as strftime formats (a fleet page formats 1000 times).
_NUMERIC = {"HH:mm dd/MM/yyyy": "%H:%M %d/%m/%Y", "HH:mm:ss dd/MM/yyyy": "%H:%M:%S %d/%m/%Y",
            "HH:mm:ss": "%H:%M:%S", "HH:mm": "%H:%M"}


def _(message: str) -> str:
    """Marks a message for extraction; translated where it is shown."""
    return message


SECTION_LABELS = (_("Fleet"), _("Sessions"), _("Updates"), _("Archive"), _("Provisioning"),
                  _("People"), _("Audit log"))
# Words that templates translate from data (`_(caller.role)`, `_(state)`), marked here so the
# catalog has them.
DATA_WORDS = (
    _("admin"), _("operator"), _("technician"), _("archivist"), _("leader"),
    _("ping"), _("get-status"), _("collect-logs"), _("restart-agent"), _("self-test"),
    _("scheduled"), _("inviting"), _("live"), _("ended"), _("closed"),
    _("invited"), _("ringing"), _("joining"), _("joined"), _("left"), _("lost"),
    _("refused"), _("declined"), _("host"), _("guest"),
    _("running"), _("paused"), _("aborted"), _("completed"), _("pending"), _("succeeded"),
    _("failed"), _("halted"), _("withdrawn"), _("queued"), _("in_progress"), _("rolled_back"),
    _("notified"), _("downloading"), _("installing"),
    _("waiting"), _("enrolled"), _("expired"), _("revoked"),
    _("downloaded"), _("restarting"), _("health_check"), _("rejected"),
    _("opened"), _("away"), _("browser_joined"), _("browser_left"), _("connecting"),
)


class Renderer:
    def __init__(self, config: ConsoleSection) -> None:
        self.config = config
        self.zone = ZoneInfo(config.timezone)
        self.translations = {lang: translator(LOCALE_DIR, DOMAIN, lang) for lang in LANGUAGES}
        self.envs = {lang: self._env(lang) for lang in LANGUAGES}

    def _env(self, lang: str) -> jinja2.Environment:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            extensions=["jinja2.ext.i18n"],
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.install_gettext_translations(self.translations[lang],  # type: ignore[attr-defined]
                                         newstyle=True)
        # Data words (states, roles) translated without %-formatting, unlike _() in templates.
        env.filters["word"] = self.translations[lang].gettext
        env.filters["when"] = lambda value, pattern="HH:mm dd/MM/yyyy": self.when(
            value, lang, pattern)
        return env

    def language(self, request: web.Request) -> str:
        chosen = request.cookies.get(LANG_COOKIE, "")
        return chosen if chosen in LANGUAGES else self.config.language

    def gettext(self, request: web.Request) -> Callable[[str], str]:
        return self.translations[self.language(request)].gettext

    def when(self, value: float | None, lang: str, pattern: str = "HH:mm dd/MM/yyyy") -> str:
        """Epoch seconds in the console's zone, Vietnamese order; '—' for none."""
        if not value:
            return "—"
        moment = dt.datetime.fromtimestamp(float(value), self.zone)
        numeric = _NUMERIC.get(pattern)
        if numeric is not None:  # digits only: no locale data needed, and 20x faster
            return moment.strftime(numeric)
        return format_datetime(moment, pattern, locale=lang)

    def render(self, request: web.Request, template: str, status: int = 200,
               **context: Any) -> web.Response:
        lang = self.language(request)
        caller = request.get(CALLER)
        menu = [(path, label) for path, label, action in SECTIONS
                if isinstance(caller, Caller) and caller.may(action)]
        html = self.envs[lang].get_template(template).render(
            lang=lang, caller=caller, menu=menu, path=request.path, status=status,
            csrf=caller.csrf if isinstance(caller, Caller) else "", **context)
        response = web.Response(text=html, content_type="text/html", status=status)
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
            "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
            "form-action 'self'; base-uri 'none'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response


def catalog(lang: str) -> gettext.NullTranslations:
    return translator(LOCALE_DIR, DOMAIN, lang)

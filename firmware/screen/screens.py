"""The layouts of every full screen the hall sees, drawn with Pillow from a `ScreenState`.

Everything is laid out in fractions of the display's height (`u` is 1/720 of it), so 1280x720
and 1920x1080 look the same and a 4:3 monitor still fits. Text that would not fit its box is set
smaller rather than clipped; paragraphs wrap on words. Every string comes from the `screen`
gettext catalog (`_()` for text, `N_()` for names looked up later): none is shown untranslated.
Colours keep a contrast ratio of at least 7:1 between text and background (WCAG AAA), because a
hall's TV is seen from across the room, often in daylight.
"""

from __future__ import annotations

import gettext
import math
from collections.abc import Callable
from datetime import datetime

import segno
from PIL import Image, ImageDraw

from tiepdan.firmware.screen.fonts import Weight, font
from tiepdan.firmware.screen.state import ScreenState

__all__ = ["N_", "Layouts"]

Colour = tuple[int, int, int]

NAVY: Colour = (10, 27, 52)
PANEL: Colour = (22, 48, 86)
INK: Colour = (246, 248, 250)
SOFT: Colour = (190, 204, 222)
AMBER: Colour = (255, 200, 40)
DARK: Colour = (18, 18, 18)
GREEN: Colour = (60, 200, 110)
RED: Colour = (235, 70, 60)
FAULT_RED: Colour = (110, 14, 14)


def N_(message: str) -> str:
    """Marks a string for the catalog where it is defined; it is translated where shown."""
    return message


WEEKDAYS = (N_("Monday"), N_("Tuesday"), N_("Wednesday"), N_("Thursday"), N_("Friday"),
            N_("Saturday"), N_("Sunday"))


class Layouts:
    def __init__(self, size: tuple[int, int], translations: gettext.NullTranslations) -> None:
        self.width, self.height = size
        self.u = self.height / 720
        self._ = translations.gettext

    # -- drawing helpers -------------------------------------------------------------------------

    def px(self, value: float) -> int:
        return round(value * self.u)

    def text(self, draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str,
             weight: Weight, size: float, fill: Colour, *, max_width: float | None = None,
             anchor: str = "la") -> tuple[int, int, int, int]:
        """One line at `xy`, shrunk until it fits `max_width`; returns its bounding box."""
        pixels = self.px(size)
        while True:
            face = font(weight, pixels)
            box = draw.textbbox(xy, text, font=face, anchor=anchor)
            if max_width is None or box[2] - box[0] <= max_width or pixels <= 10:
                break
            pixels = int(pixels * 0.92)
        draw.text(xy, text, font=face, fill=fill, anchor=anchor)
        return (int(box[0]), int(box[1]), int(box[2]), int(box[3]))

    def paragraph(self, draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str,
                  weight: Weight, size: float, fill: Colour, max_width: float,
                  *, centre: bool = False) -> int:
        """Words wrapped into `max_width`; returns the y below the last line."""
        face = font(weight, self.px(size))
        lines: list[str] = []
        for word in text.split():
            candidate = f"{lines[-1]} {word}" if lines else word
            if lines and draw.textlength(candidate, font=face) <= max_width:
                lines[-1] = candidate
            else:
                lines.append(word)
        x, y = xy
        step = self.px(size * 1.35)
        for line in lines:
            draw.text((x, y), line, font=face, fill=fill, anchor="ma" if centre else "la")
            y += step
        return int(y)

    def canvas(self, colour: Colour) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        image = Image.new("RGB", (self.width, self.height), colour)
        return image, ImageDraw.Draw(image)

    # -- screens ---------------------------------------------------------------------------------

    def draw(self, state: ScreenState) -> Image.Image:
        """The whole frame for every screen but the call's picture (see `render`)."""
        screens: dict[str, Callable[[ScreenState], Image.Image]] = {
            "idle": self.idle, "invited": self.invited, "joining": self.joining,
            "call": self.joining, "after": self.after, "fault": self.fault,
        }
        return screens[state.kind](state)

    def header(self, draw: ImageDraw.ImageDraw, state: ScreenState, ink: Colour,
               soft: Colour) -> None:
        """Hall, commune and clock across the top, on every screen but the call."""
        _ = self._
        margin = self.px(48)
        self.text(draw, (margin, self.px(36)), state.hall, "bold", 46, ink,
                  max_width=self.width * 0.62)
        if state.commune:
            self.text(draw, (margin, self.px(98)), _("Commune code {commune}").format(
                commune=state.commune), "regular", 26, soft, max_width=self.width * 0.6)
        right = self.width - margin
        self.text(draw, (right, self.px(30)), state.now.strftime("%H:%M"), "bold", 64, ink,
                  anchor="ra")
        self.text(draw, (right, self.px(108)), self.date(state.now), "regular", 26, soft,
                  anchor="ra")

    def date(self, when: datetime) -> str:
        return f"{self._(WEEKDAYS[when.weekday()])}, {when:%d/%m/%Y}"

    def countdown(self, now: datetime, at: datetime) -> str:
        _ = self._
        minutes = math.ceil((at - now).total_seconds() / 60)
        if minutes <= 0:
            return _("starting now")
        days, rest = divmod(minutes, 24 * 60)
        hours, minutes = divmod(rest, 60)
        if days:
            return _("in {days} d {hours} h").format(days=days, hours=hours)
        if hours:
            return _("in {hours} h {minutes} min").format(hours=hours, minutes=minutes)
        return _("in {minutes} min").format(minutes=minutes)

    def footer(self, draw: ImageDraw.ImageDraw, state: ScreenState, ink: Colour) -> None:
        _ = self._
        margin = self.px(48)
        y = self.height - self.px(52)
        radius = self.px(11)
        colour = GREEN if state.online else RED
        draw.ellipse((margin, y - radius, margin + 2 * radius, y + radius), fill=colour)
        label = _("Connected to the controller") if state.online else \
            _("Not connected to the controller")
        self.text(draw, (margin + 3 * radius, y), label, "regular", 26, ink, anchor="lm",
                  max_width=self.width * 0.55)
        self.text(draw, (self.width - margin, y), _("Device {device}").format(
            device=state.device), "regular", 22, ink, anchor="rm")

    def idle(self, state: ScreenState) -> Image.Image:
        _ = self._
        image, draw = self.canvas(NAVY)
        self.header(draw, state, INK, SOFT)
        margin = self.px(48)
        top, bottom = self.px(180), self.height - self.px(120)
        draw.rounded_rectangle((margin, top, self.width - margin, bottom), radius=self.px(24),
                               fill=PANEL)
        inner = margin + self.px(40)
        width = self.width - 2 * inner
        self.text(draw, (inner, top + self.px(36)), _("Next reception session"), "regular", 30,
                  SOFT, max_width=width)
        session = state.next_session
        if session is None:
            self.text(draw, (inner, top + self.px(100)), _("No session scheduled"), "bold", 48,
                      INK, max_width=width)
        else:
            when = f"{self.date(session.at)}  {session.at:%H:%M}"
            self.text(draw, (inner, top + self.px(90)), when, "bold", 52, INK, max_width=width)
            self.text(draw, (inner, top + self.px(170)), self.countdown(state.now, session.at),
                      "bold", 60, AMBER, max_width=width)
            y = top + self.px(262)
            if session.title:
                y = self.paragraph(draw, (inner, y), session.title, "regular", 32, INK, width)
            if session.host_name:
                self.text(draw, (inner, y + self.px(6)), _("Chaired by {host}").format(
                    host=session.host_name), "regular", 28, SOFT, max_width=width)
        if state.upload_percent is not None and state.upload_percent < 100:
            self.text(draw, (self.width - inner, bottom - self.px(30)),
                      _("Recording uploading {percent} %").format(percent=state.upload_percent),
                      "regular", 26, SOFT, anchor="rb")
        self.footer(draw, state, INK)
        return image

    def invited(self, state: ScreenState) -> Image.Image:
        _ = self._
        image, draw = self.canvas(AMBER)
        self.header(draw, state, DARK, DARK)
        centre, width = self.width / 2, self.width * 0.88
        y = self.px(190)
        self.text(draw, (centre, y), _("Invitation to an online reception session"), "bold",
                  44, DARK, max_width=width, anchor="ma")
        y = self.paragraph(draw, (centre, y + self.px(80)),
                           _("{host} invites this hall").format(host=state.inviter or "?"),
                           "regular", 36, DARK, width, centre=True)
        if state.title:
            y = self.paragraph(draw, (centre, y + self.px(4)), state.title, "regular", 30, DARK,
                               width, centre=True)
        box_top = max(y + self.px(24), self.px(430))
        draw.rounded_rectangle((self.width * 0.1, box_top, self.width * 0.9,
                                box_top + self.px(130)), radius=self.px(20), fill=DARK)
        self.text(draw, (centre, box_top + self.px(65)), _("Press the green Call (Gọi) button "
                  "to join"), "bold", 46, AMBER, max_width=self.width * 0.76, anchor="mm")
        self.text(draw, (centre, self.height - self.px(60)), _("Press the red End (Kết thúc) "
                  "button to decline"), "regular", 28, DARK, max_width=width, anchor="mm")
        return image

    def joining(self, state: ScreenState) -> Image.Image:
        _ = self._
        image, draw = self.canvas(NAVY)
        self.header(draw, state, INK, SOFT)
        message = _("Reconnecting…") if state.reconnecting else \
            _("Connecting to the session…")
        self.text(draw, (self.width / 2, self.height / 2), message, "bold", 54, INK,
                  max_width=self.width * 0.85, anchor="mm")
        if state.inviter:
            self.text(draw, (self.width / 2, self.height / 2 + self.px(80)), state.inviter,
                      "regular", 32, SOFT, max_width=self.width * 0.85, anchor="mm")
        self.footer(draw, state, INK)
        return image

    def after(self, state: ScreenState) -> Image.Image:
        _ = self._
        image, draw = self.canvas(NAVY)
        self.header(draw, state, INK, SOFT)
        centre, width = self.width / 2, self.width * 0.8
        self.text(draw, (centre, self.px(220)), _("Session ended"), "bold", 54, INK,
                  max_width=width, anchor="ma")
        percent = state.upload_percent
        if percent is None:  # nothing was recorded on this box: nothing to wait for
            self.footer(draw, state, INK)
            return image
        bar_top, bar_height = self.px(360), self.px(44)
        left, right = self.width * 0.12, self.width * 0.88
        draw.rounded_rectangle((left, bar_top, right, bar_top + bar_height),
                               radius=bar_height // 2, fill=PANEL)
        if percent > 0:
            draw.rounded_rectangle((left, bar_top, left + (right - left) * percent / 100,
                                    bar_top + bar_height), radius=bar_height // 2,
                                   fill=GREEN if percent >= 100 else AMBER)
        if percent >= 100:
            self.text(draw, (centre, self.px(440)), _("All saved"), "bold", 50, GREEN,
                      max_width=width, anchor="ma")
            self.paragraph(draw, (centre, self.px(520)),
                           _("The recording is kept at the central archive."), "regular", 30,
                           SOFT, width, centre=True)
        else:
            self.text(draw, (centre, self.px(440)), _("Recording uploading {percent} %").format(
                percent=percent), "bold", 46, AMBER, max_width=width, anchor="ma")
            self.paragraph(draw, (centre, self.px(520)), _("Please keep the box switched on."),
                           "regular", 30, SOFT, width, centre=True)
        self.footer(draw, state, INK)
        return image

    def fault(self, state: ScreenState) -> Image.Image:
        _ = self._
        background = FAULT_RED if state.fault in ("unreachable", "disk_low") else NAVY
        image, draw = self.canvas(background)
        self.header(draw, state, INK, INK)
        margin = self.px(64)
        width = self.width - 2 * margin
        if state.fault == "not_enrolled":
            qr_size = self.px(330)
            width = self.width - 3 * margin - qr_size
            title = _("This box is not enrolled yet")
            body = _("Call the province's IT technician and read them the device code below, "
                     "or let them scan the QR code. Nothing in the hall needs to be changed.")
            qr = self.qr(state.device, qr_size)
            image.paste(qr, (self.width - margin - qr_size, self.px(190)))
        elif state.fault == "unreachable":
            title = _("Cannot reach the controller")
            body = _("Check the network cable and the router. The box keeps trying by itself.")
        elif state.fault == "disk_low":
            title = _("Storage almost full")
            body = _("{free} MB free. Recordings are kept until they are uploaded; call the "
                     "technician if this stays.").format(free=state.free_mb or 0)
        else:
            title = _("Updating, do not switch off")
            body = _("The box restarts by itself when the update is done.")
        heading = AMBER if background == NAVY else INK
        self.text(draw, (margin, self.px(200)), title, "bold", 50, heading, max_width=width)
        y = self.paragraph(draw, (margin, self.px(290)), body, "regular", 32, INK, width)
        if state.fault == "not_enrolled":
            self.text(draw, (margin, y + self.px(30)), _("Device code"), "regular", 28, SOFT)
            self.text(draw, (margin, y + self.px(72)), state.device, "mono", 56, INK,
                      max_width=width)
        elif state.fault == "unreachable" and state.offline_since is not None:
            self.text(draw, (margin, y + self.px(30)), _("Offline since {time}").format(
                time=state.offline_since.strftime("%H:%M %d/%m/%Y")), "regular", 30, INK)
        return image

    def qr(self, data: str, size: int) -> Image.Image:
        """The device id as a QR code (segno), dark on white with its quiet zone, `size` px."""
        code = segno.make(data, error="m", micro=False)
        modules = int(code.symbol_size(scale=1, border=4)[0])
        scale = max(1, size // modules)
        matrix = Image.new("1", (modules, modules), 1)
        pixels = matrix.load()
        assert pixels is not None
        for y, row in enumerate(code.matrix_iter(scale=1, border=4)):
            for x, dark in enumerate(row):
                if dark:
                    pixels[x, y] = 0
        picture = matrix.resize((modules * scale, modules * scale), Image.Resampling.NEAREST)
        framed = Image.new("RGB", (size, size), (255, 255, 255))
        offset = (size - modules * scale) // 2
        framed.paste(picture.convert("RGB"), (offset, offset))
        return framed

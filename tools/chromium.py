"""Debian's Chromium, headless, driven by Selenium through Debian's chromium-driver (for the
console's browser tests, its screenshots and its benchmark).

Every Selenium call blocks, and the controller under test runs on the test's event loop, so
each call goes to a thread. The fake camera plays a Y4M file carrying the synthetic tag
pattern; the fake microphone plays a WAV of one tone.
"""

from __future__ import annotations

import asyncio
import os
import wave
from pathlib import Path
from typing import Any

import numpy as np

from tiepdan.board.camera.tag import Tag, encode_tag, label_hash

os.environ.setdefault("SE_OFFLINE", "true")  # Selenium must never download a driver

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")


def write_y4m(path: Path, label: str, width: int = 640, height: int = 360, fps: int = 10,
              frames: int = 30) -> int:
    """A camera clip whose every frame carries `label`'s tag; returns the label hash."""
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for n in range(frames):
            y = np.full((height, width), 60 + (n * 4) % 120, dtype=np.uint8)
            y[: height // 3, : width // 2] = 200  # a bright block, something to look at
            encode_tag(Tag(label_hash(label), n, 0), y)
            chroma = np.full((height // 2) * (width // 2), 128, dtype=np.uint8).tobytes()
            out.write(b"FRAME\n" + y.tobytes() + chroma + chroma)
    return label_hash(label)


def write_tone(path: Path, frequency: float, seconds: float = 5.0, rate: int = 48000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * 32767 * np.sin(2 * np.pi * frequency * t)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())


class Chromium:
    def __init__(self, tmp_path: Path, *, camera: Path | None = None,
                 microphone: Path | None = None, width: int = 1280, height: int = 900) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", f"--window-size={width},{height}",
                    f"--user-data-dir={tmp_path / 'chromium-profile'}",
                    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                    "--allow-loopback-in-peer-connection",
                    "--disable-features=WebRtcHideLocalIpsWithMdns",
                    "--autoplay-policy=no-user-gesture-required", "--lang=vi",
                    "--no-first-run", "--disable-background-networking"):
            options.add_argument(arg)
        if camera is not None:
            options.add_argument(f"--use-file-for-fake-video-capture={camera}")
        if microphone is not None:
            options.add_argument(f"--use-file-for-fake-audio-capture={microphone}")
        self._make = lambda: webdriver.Chrome(options=options,
                                              service=Service(str(DRIVER)))
        self.driver: Any = None

    async def __aenter__(self) -> Chromium:
        self.driver = await asyncio.to_thread(self._make)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.driver is not None:
            await asyncio.to_thread(self.driver.quit)

    async def call(self, name: str, *args: Any) -> Any:
        return await asyncio.to_thread(getattr(self.driver, name), *args)

    async def get(self, url: str) -> None:
        await self.call("get", url)

    async def js(self, script: str, *args: Any) -> Any:
        return await self.call("execute_script", script, *args)

    async def js_async(self, script: str, *args: Any) -> Any:
        return await self.call("execute_async_script", script, *args)

    async def login(self, base: str, name: str, password: str) -> None:
        """Sign in with the keyboard, as a person would: type, Tab, type, Enter."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import WebDriverWait

        await self.get(f"{base}/login")

        def type_in() -> None:
            field = self.driver.find_element(By.ID, "name")
            field.send_keys(name, Keys.TAB, password, Keys.ENTER)
            # Enter only starts the form's navigation: wait until it has left the sign-in page,
            # or the next `get` races the redirect and the page that loads last wins.
            WebDriverWait(self.driver, 15).until(
                lambda driver: "/login" not in driver.execute_script("return location.pathname;"))
        await asyncio.to_thread(type_in)

    async def click(self, element_id: str) -> None:
        from selenium.webdriver.common.by import By

        def click() -> None:
            self.driver.find_element(By.ID, element_id).click()
        await asyncio.to_thread(click)

    async def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        await self.call("save_screenshot", str(path))

    async def luma(self, video_id: str) -> np.ndarray[Any, Any] | None:
        """The picture a <video> shows now, as a luma plane (drawn on a canvas, read back)."""
        raw = await self.js(
            "const v = document.getElementById(arguments[0]);"
            "if (!v || !v.videoWidth) return null;"
            "const c = document.createElement('canvas');"
            "c.width = v.videoWidth; c.height = v.videoHeight;"
            "const g = c.getContext('2d'); g.drawImage(v, 0, 0);"
            "const d = g.getImageData(0, 0, c.width, c.height).data;"
            "let s = ''; for (let i = 0; i < d.length; i += 4) {"
            "  s += String.fromCharCode(Math.round(0.299*d[i] + 0.587*d[i+1] + 0.114*d[i+2])); }"
            "return [c.width, c.height, btoa(s)];", video_id)
        if raw is None:
            return None
        import base64

        width, height, data = raw
        return np.frombuffer(base64.b64decode(data), dtype=np.uint8).reshape(height, width)

    async def tones(self, audio_id: str, seconds: float = 1.0) -> list[float]:
        """The strongest frequencies in what an <audio> element plays (Web Audio analyser)."""
        peaks: list[float] = await self.js_async(
            "const [id, seconds, done] = arguments;"
            "const a = document.getElementById(id);"
            "const ctx = new AudioContext();"
            "const src = ctx.createMediaStreamSource(a.srcObject);"
            "const an = ctx.createAnalyser(); an.fftSize = 16384; an.smoothingTimeConstant = 0;"
            "src.connect(an);"
            "setTimeout(() => {"
            "  const bins = new Float32Array(an.frequencyBinCount); an.getFloatFrequencyData(bins);"
            "  const top = Math.max(...bins); const found = [];"
            "  for (let i = 2; i < bins.length - 2; i++) {"
            "    if (bins[i] > top - 20 && bins[i] >= bins[i-1] && bins[i] >= bins[i+1])"
            "      found.push(i * ctx.sampleRate / an.fftSize); }"
            "  ctx.close(); done(found);"
            "}, seconds * 1000);", audio_id, seconds)
        return peaks

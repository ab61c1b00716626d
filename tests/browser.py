"""Headless Debian Chromium for the browser tests, driven by Playwright (no browser download)."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is not installed: run `make install` (it installs packages-apt.txt)"
    return path


@contextmanager
def browser_page(width: int = 1400, height: int = 900):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def screenshot(page, name: str, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    return path


def label_studio_login(page, settings) -> None:
    """Sign in to the Label Studio of `settings` (its username and password) in `page`."""
    page.goto(f"{settings.label_studio_url}/user/login/")
    page.fill("input[name=email]", settings.label_studio_username)
    page.fill("input[name=password]", settings.label_studio_password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")


# The shapes Label Studio's editor drew: its canvas is Konva; a keypoint is a Circle, a box a Rect.
EDITOR_SHAPES = """() => {
  const stage = window.Konva.stages[0];
  return {
    circles: stage.find('Circle').filter((n) => n.isVisible()).length,
    rects: stage.find('Rect').filter((n) => n.isVisible() && n.width() > 5).length,
  };
}"""

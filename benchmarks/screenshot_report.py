"""Render a report.html in a real headless browser, as a reader at 1400 px sees it.

    python benchmarks/screenshot_report.py featkit_runs/report/report.html
    python benchmarks/screenshot_report.py report.html --out shot.png --width 1400 --height 6000

Needs Chromium (Debian: ``apt-get install chromium``; ``--browser`` for another path).
The page is drawn at ``--width`` CSS pixels into a ``--height`` tall window; a taller
page is cut, so pick a height that holds it. The browser runs with a throwaway
profile and no network services.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser(given: str | None = None) -> str | None:
    """The first Chromium-like browser on PATH (or ``given``), None when there is none."""
    for name in (given,) if given else CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(
    page: Path,
    out: Path,
    *,
    width: int = 1400,
    height: int = 4000,
    browser: str | None = None,
    timeout: float = 120.0,
) -> Path:
    """Write a PNG of ``page`` rendered ``width`` × ``height`` CSS px; return ``out``."""
    exe = find_browser(browser)
    if exe is None:
        raise FileNotFoundError(f"no browser found: expected one of {', '.join(CANDIDATES)}")
    page, out = Path(page).resolve(), Path(out).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"{page}: expected a report.html, found nothing")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="featkit-shot-") as profile:
        command = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={out}",
            page.as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{exe} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="a report.html")
    parser.add_argument("--out", type=Path, default=None, help="PNG (default: beside the page)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--browser", default=None, help="browser executable")
    args = parser.parse_args(argv)
    out = args.out or args.page.with_name(f"{args.page.stem}_{args.width}px.png")
    try:
        written = screenshot(
            args.page, out, width=args.width, height=args.height, browser=args.browser
        )
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"screenshot: {error}", file=sys.stderr)
        return 1
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write ``docs/console.png``: the console's model page for a freshly built tiny model.

It uses the browser tests' live server (real registration, real variant builds and profiles), so the
picture in the docs is what the tests exercise. Run: ``.venv/bin/python scripts/console_screenshot.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests package holds the server helper

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.browser.test_console import ADMIN_KEY, CHROMIUM, CHROMIUM_ARGS, MODEL, ConsoleServer  # noqa: E402


def main() -> None:
    """Build a model, send a few queries, sign in, and screenshot its console page."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="infaas-console-shot-") as home:
        server = ConsoleServer(Path(home))
        server.start()
        try:
            server.register(MODEL)
            server.wait_built(MODEL)
            for rows in (1, 2, 4):
                server.infer(MODEL, rows=rows)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"{server.url}/console/login?next=/console/models/{MODEL}")
                page.fill("input[name=key]", ADMIN_KEY)
                page.click("button[type=submit]")
                page.wait_for_url(f"{server.url}/console/models/{MODEL}")
                page.wait_for_load_state("networkidle")
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
        finally:
            server.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

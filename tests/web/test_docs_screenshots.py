"""docs/web.md shows the browser tests' own screenshots: every image it references is a PNG
in the repository, and a test of tests/web takes it (``screenshot(page, NAME)``), so
``FLUX_SCREENSHOTS=1 scripts/test tests/web`` remakes every one (issue 22)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def test_every_screenshot_in_the_docs_exists_and_is_taken_by_a_browser_test() -> None:
    shown = re.findall(r"!\[[^\]]*\]\((web/[^)]+)\)", (REPO / "docs" / "web.md").read_text())
    assert len(shown) >= 8, shown  # sign-in, list, phone, execution, markup, row, diff, resume
    taken = {
        name
        for test in (REPO / "tests" / "web").glob("test_*.py")
        for name in re.findall(r"screenshot\(page, \"([\w-]+)\"\)", test.read_text())
    }
    for image in shown:
        path = REPO / "docs" / image
        assert path.read_bytes()[:8] == PNG, image
        assert path.suffix == ".png" and path.stem in taken, (image, sorted(taken))

"""`relay demo` in a real browser: what a new user sees in the first minute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS
from tests.process import running_demo

pytestmark = pytest.mark.e2e


def test_demo_in_a_browser(context: Any, tmp_path: Path) -> None:
    """Open the sample app the demo prints, sign in on the development provider's form, and
    see the app greet the user; the screenshot is the one in the README."""
    with running_demo(tmp_path) as demo:
        app = demo.app_url
        page = context.new_page()
        page.set_viewport_size({"width": 900, "height": 420})
        page.goto(app)
        page.wait_for_url(f"http://127.0.0.1:{demo.ports['provider']}/authorize**")
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", "alice-demo-password")
        page.click("button[type=submit]")
        page.wait_for_url(app)
        assert page.inner_text("#email") == "alice@example.com"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-signed-in.png"))

"""`relay demo` in a real browser: what a new user sees in the first minute."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS
from tests.process import RELAY, free_port

pytestmark = pytest.mark.e2e


def test_demo_in_a_browser(context: Any, tmp_path: Path) -> None:
    """Open the sample app the demo prints, sign in on the development provider's form, and
    see the app greet the user; the screenshot is the one in the README."""
    ports = {"relay": free_port(), "provider": free_port(), "app": free_port()}
    argv = [RELAY, "demo", "--database", f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}"]
    for name, port in ports.items():
        argv += [f"--{name}-port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        listening = 0
        for line in proc.stdout:
            listening += "Uvicorn running on" in line
            if listening == 3:
                break
        app = f"http://127.0.0.1:{ports['app']}/"
        page = context.new_page()
        page.set_viewport_size({"width": 900, "height": 420})
        page.goto(app)
        page.wait_for_url(f"http://127.0.0.1:{ports['provider']}/authorize**")
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", "alice-demo-password")
        page.click("button[type=submit]")
        page.wait_for_url(app)
        assert page.inner_text("#email") == "alice@example.com"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-signed-in.png"))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.read()
            proc.stdout.close()

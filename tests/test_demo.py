"""`relay demo`, the README's first command: a whole login through its three servers."""

from __future__ import annotations

import html
import re
import subprocess
from pathlib import Path

import httpx2
import pytest
from starlette.testclient import TestClient

from relay.demo.provider import DevProvider
from tests.process import RELAY, RelayProcess, free_port, running_demo


def hidden_fields(page: str) -> dict[str, str]:
    return {
        name: html.unescape(value)
        for name, value in re.findall(r'<input type=hidden name="(\w+)" value="([^"]*)">', page)
    }


def test_demo_signs_a_user_in_and_out(tmp_path: Path) -> None:
    """Open the sample app, get sent to the provider's form, sign in as alice, land back on the
    app greeted by email; sign out through the relay and the provider."""
    with running_demo(tmp_path) as demo:
        ports = demo.ports
        assert f"open        {demo.app_url}" in demo.banner
        assert "sign in as  alice / alice-demo-password" in demo.banner
        # Three servers in one process: each of their lines says which one wrote it.
        running = [line for line in demo.banner.splitlines() if "Uvicorn running on" in line]
        assert sorted(line.split("server=")[1].split()[0] for line in running) == [
            "app",
            "provider",
            "relay",
        ]

        app = f"http://127.0.0.1:{ports['app']}/"
        with httpx2.Client(follow_redirects=True, timeout=10) as browser:
            form = browser.get(app)
            assert form.url.port == ports["provider"]
            assert "Development provider" in form.text
            fields = hidden_fields(form.text) | {
                "username": "alice",
                "password": "alice-demo-password",
            }
            landed = browser.post(f"http://127.0.0.1:{ports['provider']}/authorize", data=fields)
            assert str(landed.url) == app
            assert "<strong id=email>alice@example.com</strong>" in landed.text

            relay = f"http://127.0.0.1:{ports['relay']}"
            signed_out = browser.post(relay + "/logout", headers={"Origin": relay})
            # Through the provider's logout, back to the relay's page, not its sign-in form.
            assert [r.url.port for r in signed_out.history] == [ports["relay"], ports["provider"]]
            assert str(signed_out.url) == relay + "/?state=signed-out"
            assert "You are signed out" in signed_out.text and "Sign in again" in signed_out.text
            assert browser.get(relay + "/auth").status_code == 401
    # No proxy in the demo: the browser's own address is the client's, not an unknown one.
    assert "login.succeeded" in demo.rest
    assert "login.client_unknown" not in demo.rest


def test_demo_wrong_password_is_refused() -> None:
    """The development provider's form refuses a wrong password and issues no code."""
    provider = DevProvider(
        "http://127.0.0.1:9000",
        "client",
        "secret",
        redirect_uris=["http://127.0.0.1:4180/callback"],
        post_logout_redirect_uris=[],
    )
    params = {
        "client_id": "client",
        "redirect_uri": "http://127.0.0.1:4180/callback",
        "response_type": "code",
        "scope": "openid",
        "state": "s",
        "code_challenge": "x" * 43,
        "code_challenge_method": "S256",
    }
    with TestClient(provider.app, base_url="http://127.0.0.1:9000") as client:
        refused = client.post("/authorize", data=params | {"username": "alice", "password": "no"})
        assert refused.status_code == 401 and "wrong password" in refused.text
        plain = client.get("/authorize", params=params | {"code_challenge_method": "plain"})
        assert plain.status_code == 400


def test_development_provider_refuses_other_addresses() -> None:
    """The development provider serves loopback only."""
    with pytest.raises(ValueError, match="loopback"):
        DevProvider("http://0.0.0.0:9000", "c", "s", redirect_uris=[], post_logout_redirect_uris=[])


def test_a_warm_install_installs_nothing() -> None:
    """scripts/install (which scripts/demo and scripts/test run first) says what it does, and
    with nothing changed since the last install it skips pip: a warm demo starts at once."""
    root = Path(__file__).parent.parent
    for _ in range(2):  # the first brings .venv up to date, if it was not
        result = subprocess.run(
            [str(root / "scripts" / "install"), "dev"],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    assert (
        result.stdout.strip().splitlines()[-1] == "install: .venv is up to date (oidc-relay[dev])"
    )


def test_the_development_provider_alone_signs_people_in_to_ones_own_relay(
    tmp_path: Path,
) -> None:
    """`relay demo --provider-only PUBLIC_URL` prints a [provider] block; a relay of one's
    own, configured with it as printed, signs alice in through it."""
    provider_port, relay_port = free_port(), free_port()
    relay_url = f"http://127.0.0.1:{relay_port}"
    argv = [RELAY, "demo", "--provider-only", relay_url, "--provider-port", str(provider_port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        printed = ""
        while "Uvicorn running on" not in printed:
            line = proc.stdout.readline()
            assert line, printed
            printed += line
        block = printed[printed.index("[provider]") : printed.index("registered:")]
        config = tmp_path / "relay.toml"
        config.write_text(
            f'[server]\nport = {relay_port}\npublic_url = "{relay_url}"\n'
            + "\n".join(line.strip() for line in block.splitlines())
            + '\n[session]\nsecret = "'
            + "s" * 40
            + '"\ncookie_secure = false\n'
            + '[access]\nemail_domains = ["*"]\n'
        )
        relay = RelayProcess(config, cwd=tmp_path)
        relay.start()
        try:
            with httpx2.Client(follow_redirects=True, timeout=10) as browser:
                form = browser.get(relay_url + "/login")
                assert form.url.port == provider_port
                fields = hidden_fields(form.text) | {
                    "username": "alice",
                    "password": "alice-demo-password",
                }
                landed = browser.post(f"http://127.0.0.1:{provider_port}/authorize", data=fields)
                assert str(landed.url) == relay_url + "/"
                assert "You are signed in as" in landed.text
                assert browser.get(relay_url + "/auth").status_code == 200
        finally:
            relay.stop()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()

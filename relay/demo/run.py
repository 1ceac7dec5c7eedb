"""Start the relay, the development provider and the sample app on 127.0.0.1."""

from __future__ import annotations

import asyncio
import secrets
import socket

import uvicorn

from relay.app import create_app
from relay.config import config_from_mapping
from relay.demo.provider import ACCOUNTS, BANNER, DevProvider
from relay.demo.sample_app import sample_app
from relay.logs import SERVER, configure_logging

HOST = "127.0.0.1"
CLIENT_ID = "oidc-relay-demo"


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def run_demo(relay_port: int, provider_port: int, app_port: int, database_url: str) -> int:
    busy = [p for p in (relay_port, provider_port, app_port) if not port_free(p)]
    if busy:
        print(f"relay demo: port {busy[0]} on {HOST} is in use; pick others with --*-port")
        return 1
    relay_url = f"http://{HOST}:{relay_port}"
    issuer = f"http://{HOST}:{provider_port}"
    app_url = f"http://{HOST}:{app_port}/"
    provider, client_secret = _provider(issuer, relay_url)
    config = config_from_mapping(
        {
            # No proxy in front: the browser talks to the relay itself, from loopback, which
            # the default trusted_proxies would take for a proxy that names no client.
            "server": {
                "host": HOST,
                "port": relay_port,
                "public_url": relay_url,
                "trusted_proxies": [],
            },
            "provider": {
                "issuer": issuer,
                "client_id": CLIENT_ID,
                "client_secret": client_secret,
            },
            "database": {"url": database_url},
            # A new secret each run: tokens sealed by an earlier run stay sealed (sessions
            # themselves still work; they need no secret to be found).
            "session": {"secret": secrets.token_urlsafe(48), "cookie_secure": False},
            "redirects": {"allowed_hosts": [f"{HOST}:{app_port}"], "default_url": app_url},
            "logging": {"format": "console"},
            # The demo's provider knows only its own two accounts: let both through.
            "access": {"email_domains": ["*"]},
        },
        env={},
    )
    configure_logging("info", "console")
    account = next(iter(ACCOUNTS.values()))
    print(
        f"\n  oidc-relay demo\n"
        f"  open        {app_url}\n"
        f"  sign in as  {account.username} / {account.password}\n"
        f"  relay       {relay_url}   (SQLite: {database_url})\n"
        f"  provider    {issuer}   ({BANNER})\n"
        f"  sessions    relay sessions list --database-url {database_url}\n"
        f"  stop with   Ctrl+C\n",
        flush=True,
    )
    servers = {
        name: uvicorn.Server(
            uvicorn.Config(
                app, host=HOST, port=port, log_config=None, access_log=False, proxy_headers=False
            )
        )
        for name, app, port in (
            ("provider", provider.app, provider_port),
            ("relay", create_app(config), relay_port),
            ("app", sample_app(relay_url), app_port),
        )
    }
    asyncio.run(_serve_all(servers))
    return 0


def run_provider(provider_port: int, public_url: str) -> int:
    """Only the development provider, with a client for a relay of one's own at
    ``public_url`` (to try a proxy recipe on this machine): prints the keys to paste."""
    if not port_free(provider_port):
        print(
            f"relay demo: port {provider_port} on {HOST} is in use; "
            "pick another with --provider-port"
        )
        return 1
    public_url = public_url.rstrip("/")
    issuer = f"http://{HOST}:{provider_port}"
    provider, client_secret = _provider(issuer, public_url)
    configure_logging("info", "console")
    account = next(iter(ACCOUNTS.values()))
    print(
        f"\n  oidc-relay development provider, for the relay at {public_url}\n"
        f"  sign in as  {account.username} / {account.password}\n"
        f"  stop with   Ctrl+C\n\n"
        f"  in your relay's config:\n\n"
        f"  [provider]\n"
        f'  issuer = "{issuer}"\n'
        f'  client_id = "{CLIENT_ID}"\n'
        f'  client_secret = "{client_secret}"\n\n'
        f"  registered: redirect URI {public_url}/callback, post-logout {public_url}/\n",
        flush=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            provider.app,
            host=HOST,
            port=provider_port,
            log_config=None,
            access_log=False,
            proxy_headers=False,
        )
    )
    asyncio.run(_serve_all({"provider": server}))
    return 0


def _provider(issuer: str, relay_url: str) -> tuple[DevProvider, str]:
    """The development provider, with a new secret for the one client: the relay at
    ``relay_url``, which comes back to its own "You are signed out" page after a logout."""
    client_secret = secrets.token_urlsafe(32)
    provider = DevProvider(
        issuer,
        CLIENT_ID,
        client_secret,
        redirect_uris=[relay_url + "/callback"],
        post_logout_redirect_uris=[relay_url + "/"],
    )
    return provider, client_secret


async def _serve_all(servers: dict[str, uvicorn.Server]) -> None:
    async def serve(name: str, server: uvicorn.Server) -> None:
        SERVER.set(name)  # each line this server's task logs says which server wrote it
        await server.serve()

    await asyncio.gather(*(serve(name, server) for name, server in servers.items()))

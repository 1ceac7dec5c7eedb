"""Benchmark 12: API callers' bearer tokens at /auth ([bearer]), seen before, against bare.

64 RFC 9068 JWT access tokens (RS256), round-robin over 32 connections, each verified once by
the relay and then passed on its times alone (relay/bearer.py); interleaved rounds of the bare
Starlette endpoint and the relay. The issuer's keys are served by a static file server, as
any JWKS is fetched once and cached. Bar: the relay at >= 0.6x bare's requests per second.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

from benchmarks import harness as h

AUDIENCE = "https://api.bench"
BAR = 0.6


def tokens(issuer: str, key: RSAKey, count: int) -> list[str]:
    now = int(time.time())
    header = {"alg": "RS256", "kid": key.kid, "typ": "at+jwt"}
    return [
        jwt.encode(
            header,
            {
                "iss": issuer,
                "sub": f"svc-{n}",
                "aud": AUDIENCE,
                "iat": now,
                "exp": now + 3600,
                "client_id": f"svc-{n}",
                "email": f"svc-{n}@example.com",
                "email_verified": True,
                "groups": ["ci"],
            },
            key,
            algorithms=["RS256"],
        )
        for n in range(count)
    ]


def run(*, seconds: float, rounds: int) -> dict[str, Any]:
    with h.database() as url, h.workdir() as tmp:
        key = RSAKey.generate_key(2048, parameters={"kid": "bench-1", "use": "sig"})
        (tmp / "jwks.json").write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
        keys_port = h.free_port()
        keys = h.Server(
            "jwks",
            [sys.executable, "-m", "http.server", str(keys_port), "--bind", "127.0.0.1",
             "--directory", str(tmp)],
            keys_port,
            tmp / "jwks.log",
        ).start()  # fmt: skip
        issuer = f"http://127.0.0.1:{keys_port}"
        port = h.free_port()
        config = h.write_config(
            tmp,
            url,
            port,
            bearer={"enabled": True, "audiences": [AUDIENCE]},
        )
        # The extra issuer as a TOML array of tables, after the [bearer] keys.
        with config.open("a") as toml:
            toml.write(
                f'[[bearer.issuers]]\nissuer = "{issuer}"\naudiences = ["{AUDIENCE}"]\n'
                f'jwks_uri = "{issuer}/jwks.json"\n'
            )
        script = h.bearer_script(tmp, tokens(issuer, key, 64))
        servers = {"bare": h.bare_server(tmp), "relay": h.relay_server(config, port, tmp)}
        try:
            for server in servers.values():  # warm-up: every token verified once
                h.wrk(server, script, 2)
            results = h.interleave(
                rounds,
                {
                    "bare": lambda: h.wrk(servers["bare"], script, seconds),
                    "relay": lambda: h.wrk(servers["relay"], script, seconds),
                },
            )
        finally:
            for server in servers.values():
                server.stop()
            keys.stop()
        out: dict[str, Any] = {
            "seconds": seconds,
            "rounds": results,
            **h.compare(results["relay"], results["bare"]),
        }
        out["targets"] = {"seen_token_ge_0.6x_bare": out["ratio"]["rps"]["of_medians"] >= BAR}
        out["relay_log_problems"] = servers["relay"].problems()[:10]
        out["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return out

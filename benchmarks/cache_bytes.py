"""Benchmark 9: the memory one cached session costs, in one process (tracemalloc).

Realistic claims, as an enterprise provider sends them (issuer, audience, times, email, names,
ten groups), read the way the store reads a row (``json.loads`` of the stored claims, then
``shared``), put in the session cache, with what the forward-auth shortcut keeps on it (the
rendered headers and one verdict). With and without the access token held in memory (held only while
``[headers] pass_access_token`` or ``set_authorization_header`` is on). The figure sizes
``[cache] max_entries`` (README, *The session cache*).
"""

from __future__ import annotations

import base64
import json
import os
import time
import tracemalloc
import uuid
from typing import Any

from relay.access import Access
from relay.config import config_from_mapping
from relay.headers import IdentityHeaders
from relay.store.cache import CachedSession, SessionCache
from relay.store.records import ActiveSession, shared

TOKEN_BYTES = 700  # random bytes: a ~940-character token, as a signed JWT access token is


def claims(i: int) -> dict[str, Any]:
    return {
        "iss": "https://login.example.com/realms/corp",
        "sub": str(uuid.uuid4()),
        "aud": "oidc-relay",
        "exp": 1_800_000_000,
        "iat": 1_790_000_000,
        "auth_time": 1_790_000_000,
        "email": f"firstname.lastname{i}@example.com",
        "email_verified": True,
        "name": f"Firstname Lastname{i}",
        "given_name": "Firstname",
        "family_name": f"Lastname{i}",
        "preferred_username": f"flastname{i}",
        "groups": [f"team-{g}-engineering" for g in range(8)] + ["all-staff", "vpn-users"],
    }


def measure(sessions: int, *, with_token: bool) -> dict[str, Any]:
    config = config_from_mapping(
        {
            "server": {"public_url": "https://auth.example.com"},
            "provider": {
                "issuer": "https://login.example.com",
                "client_id": "x",
                "client_secret": "y" * 16,
            },
            "session": {"secret": "s" * 40},
            "access": {"email_domains": ["*"]},
            "headers": {"pass_access_token": with_token},
        },
        {},
    )
    access = Access(config.access, shown=config.headers.claims)
    identity = IdentityHeaders(config.headers, access)
    rows = [
        (
            os.urandom(32).hex(),
            json.dumps(claims(i), separators=(",", ":")),
            base64.urlsafe_b64encode(os.urandom(TOKEN_BYTES)).decode() if with_token else None,
        )
        for i in range(sessions)
    ]
    now = int(time.time())
    cache = SessionCache(sessions)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for id_hash, stored, token in rows:
        read = shared(json.loads(stored))
        session = ActiveSession(
            id_hash, read["sub"], read, now, now, now + 3600, token, now + 300, True
        )
        cache.put(id_hash, CachedSession(session), cache.generation)
        session.memo["headers"] = identity.render(session)
        session.memo[(b"", None)] = access.refusal(session.claims, None, "") is None
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_session = (after - before) / sessions
    return {
        "sessions": sessions,
        "with_access_token": with_token,
        "claims_json_bytes": len(rows[0][1]),
        "bytes_per_session": round(per_session),
        "mib_per_100k": round(per_session * 100_000 / 2**20, 1),
    }


def run(*, sessions: int) -> dict[str, Any]:
    out = {"without_token": measure(sessions, with_token=False)}
    out["with_token"] = measure(sessions, with_token=True)
    for name, figures in out.items():
        print(f"    {name}: {figures}", flush=True)
    return out

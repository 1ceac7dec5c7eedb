"""Back-channel logout tokens already accepted, by the hash of their jti: a replay is refused.

A row is kept until the token it names could no longer be accepted anyway (its ``iat`` past
provider.logout_token_max_age and the clock skew); the pruner removes it after that. The
primary key decides between two replicas handed the same token at once: the insert that
lands first wins, the other inserts nothing and the token counts as replayed.
"""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store.models import logout_tokens


async def remember(conn: AsyncConnection, jti_hash: str, keep_until: int) -> bool:
    """Record a token's jti in ``conn``'s transaction; False when it was there already."""
    insert = postgres_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(logout_tokens)
        .values(jti_hash=jti_hash, expires_at=keep_until)
        .on_conflict_do_nothing(index_elements=[logout_tokens.c.jti_hash])
        # RETURNING, not rowcount: an INSERT's rowcount is not reported alike by every driver.
        .returning(logout_tokens.c.jti_hash)
    )
    return (await conn.execute(statement)).first() is not None


async def forget_expired(conn: AsyncConnection, now: int) -> int:
    """Delete the rows of tokens that could no longer be accepted; return how many."""
    result = await conn.execute(delete(logout_tokens).where(logout_tokens.c.expires_at <= now))
    return result.rowcount

"""Alembic's entry point. The relay passes its own connection (``relay migrate``, and the
SQLite self-migration at startup); ``alembic`` on the command line is not needed."""

from alembic import context

from relay.store.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `relay migrate --config PATH`")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

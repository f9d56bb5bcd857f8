"""Alembic environment: migrations run on the connection that tace.schema hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from tace.db import metadata

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `tace db upgrade`, which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

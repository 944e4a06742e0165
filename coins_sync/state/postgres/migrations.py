"""The PostgreSQL backend's schema: an append-only list of migrations, checksummed.

A migration is never edited once released; a change is a new, higher version. They are
applied automatically, in one transaction under ``pg_advisory_xact_lock`` (one key per
schema, so runs on other schemas never wait), and each applied version's checksum is
kept in ``schema_migrations``. A database with a version this code does not know, or
with a checksum that differs, is refused. ``coins-sync state schema-sql`` prints the
same SQL for a DBA who applies schema changes by hand.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from coins_sync.state.postgres.connection import Database, driver

#: (version, SQL). ``{s}`` stands for the schema name. Append only.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """\
CREATE TABLE {s}.environment (
    name        text PRIMARY KEY,
    lineage     text NOT NULL DEFAULT '',
    serial      bigint NOT NULL DEFAULT 0 CHECK (serial >= 0),
    lock_epoch  bigint NOT NULL DEFAULT 0,
    holder      jsonb
);
CREATE TABLE {s}.run (
    id          bigserial PRIMARY KEY,
    env         text NOT NULL REFERENCES {s}.environment (name),
    actor       text NOT NULL,
    host        text NOT NULL,
    pid         integer NOT NULL,
    command     text NOT NULL,
    commit      text,
    lock_epoch  bigint NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz
);
CREATE TABLE {s}.entry (
    env             text NOT NULL REFERENCES {s}.environment (name),
    company_id      text NOT NULL CHECK (company_id <> ''),
    configuration   text NOT NULL CHECK (configuration <> ''),
    event           text NOT NULL CHECK (event <> ''),
    amount          bigint NOT NULL CHECK (amount >= 0),
    coin_config_id  text,
    uncertain_since text,
    PRIMARY KEY (env, company_id, configuration, event),
    CHECK ((coin_config_id IS NULL) <> (uncertain_since IS NULL))
);
CREATE TABLE {s}.operation (
    id              bigserial PRIMARY KEY,
    env             text NOT NULL REFERENCES {s}.environment (name),
    run_id          bigint REFERENCES {s}.run (id),
    company_id      text NOT NULL,
    configuration   text NOT NULL,
    event           text NOT NULL,
    amount          bigint NOT NULL,
    intent_at       text NOT NULL,
    outcome         text
        CHECK (outcome IN ('created', 'updated', 'unknown', 'failed', 'abandoned')),
    coin_config_id  text,
    done_at         timestamptz
);
CREATE UNIQUE INDEX operation_one_open_intent_per_key
    ON {s}.operation (env, company_id, configuration, event) WHERE outcome IS NULL;
CREATE TABLE {s}.audit (
    id      bigserial PRIMARY KEY,
    env     text NOT NULL,
    run_id  bigint,
    at      timestamptz NOT NULL DEFAULT now(),
    record  jsonb NOT NULL
);
CREATE INDEX audit_by_env ON {s}.audit (env, id);
""",
    ),
    (
        2,
        """\
-- Journal writes no longer bump the serial each (16 writers queued on one row): the
-- first write after a bump marks the environment dirty and bumps it; the others only
-- lock the row FOR SHARE. A checkpoint, or the next run's recovery, bumps it again.
ALTER TABLE {s}.environment ADD COLUMN dirty boolean NOT NULL DEFAULT false;
""",
    ),
    (
        3,
        """\
-- An update (PATCH) whose outcome is unknown: the server holds amount or
-- pending_amount, so the next plan reads that config back. A confirmed write clears it.
ALTER TABLE {s}.entry ADD COLUMN pending_amount bigint
    CHECK (pending_amount IS NULL OR (pending_amount >= 0 AND coin_config_id IS NOT NULL));
""",
    ),
)

LATEST = MIGRATIONS[-1][0]


def checksum(sql: str) -> str:
    return hashlib.sha256(sql.encode("utf-8")).hexdigest()


def bookkeeping_sql(schema: str) -> str:
    return (
        "CREATE SCHEMA IF NOT EXISTS {s};\n"
        "CREATE TABLE IF NOT EXISTS {s}.schema_migrations (\n"
        "    version     integer PRIMARY KEY,\n"
        "    checksum    text NOT NULL,\n"
        "    applied_at  timestamptz NOT NULL DEFAULT now()\n"
        ");\n"
    ).replace("{s}", quoted(schema))


def quoted(schema: str) -> str:
    """The schema's name as SQL: always quoted (``psycopg.sql.Identifier``), so a name
    that is a keyword (``user``) works; settings allow only lower-case names, which
    quoted and unquoted are the same schema."""
    from psycopg import sql

    return sql.Identifier(schema).as_string(None)


def render(version: int, sql: str, schema: str) -> str:
    """Migration ``version`` for ``schema``: ``{s}`` replaced by its quoted name (the
    checksum is of the text before, so it does not depend on the schema)."""
    return sql.replace("{s}", quoted(schema))


def full_sql(schema: str) -> str:
    """Every migration as one script, for a DBA (what the automatic path runs)."""
    name = quoted(schema)
    parts = [
        f"-- coins-sync state schema, version {LATEST}, for schema {name}",
        "BEGIN;",
        bookkeeping_sql(schema).rstrip(),
    ]
    for version, sql in MIGRATIONS:
        parts.append(f"-- migration {version}")
        parts.append(render(version, sql, schema).rstrip())
        parts.append(record_sql(schema, version, checksum(sql)))
    parts.append("COMMIT;")
    return "\n".join(parts) + "\n"


def record_sql(schema: str, version: int, digest: str) -> str:
    """The script's line that records one applied migration."""
    from psycopg import sql

    line = sql.SQL("INSERT INTO {s}.schema_migrations (version, checksum) VALUES ({v}, {c});")
    composed = line.format(s=sql.Identifier(schema), v=sql.Literal(version), c=sql.Literal(digest))
    return str(composed.as_string(None))


def migration_key(schema: str) -> int:
    """The key of the transaction lock that migrations of one schema run under."""
    digest = hashlib.sha256(f"coins-sync\0migrate\0{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def applied(conn: Any, schema: str) -> dict[int, str] | None:
    """Applied migrations, or None when the schema was never set up."""
    row = conn.execute(
        "SELECT to_regclass(quote_ident(%s) || '.schema_migrations')", (schema,)
    ).fetchone()
    if row is None or row[0] is None:
        return None
    from psycopg import sql

    query = sql.SQL("SELECT version, checksum FROM {s}.schema_migrations")
    rows = conn.execute(query.format(s=sql.Identifier(schema))).fetchall()
    return {int(v): str(c) for v, c in rows}


def check_applied(db: Database, found: Mapping[int, str]) -> bool:
    """True when up to date; raises for a newer or altered database."""
    newer = sorted(v for v in found if v > LATEST)
    if newer:
        raise db.error(
            f"the database schema is at version {max(newer)}, newer than this "
            f"coins-sync knows (version {LATEST}); upgrade coins-sync"
        )
    for version, sql in MIGRATIONS:
        if version in found and found[version] != checksum(sql):
            raise db.error(
                f"migration {version} in the database differs from this coins-sync's "
                "(checksum mismatch); refusing to use it"
            )
    return all(version in found for version, _ in MIGRATIONS)


def migrate(db: Database, conn: Any | None = None) -> list[int]:
    """Apply missing migrations in one transaction under a per-schema lock."""
    own = conn is None
    conn = conn or db.connect(purpose="migrate")
    psycopg = driver()
    schema = db.schema
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (migration_key(schema),))
            conn.execute(bookkeeping_sql(schema))
            done_before = applied(conn, schema) or {}
            check_applied(db, done_before)
            done = []
            for version, sql in MIGRATIONS:
                if version in done_before:
                    continue
                conn.execute(render(version, sql, schema))
                conn.execute(
                    db.sql("INSERT INTO {s}.schema_migrations (version, checksum) VALUES (%s, %s)"),
                    (version, checksum(sql)),
                )
                done.append(version)
    except psycopg.Error as e:
        raise db.error("cannot set up the state schema", e) from e
    finally:
        if own:
            conn.close()
    return done

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
        f"CREATE SCHEMA IF NOT EXISTS {schema};\n"
        f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (\n"
        "    version     integer PRIMARY KEY,\n"
        "    checksum    text NOT NULL,\n"
        "    applied_at  timestamptz NOT NULL DEFAULT now()\n"
        ");\n"
    )


def render(version: int, sql: str, schema: str) -> str:
    return sql.replace("{s}", schema)


def full_sql(schema: str) -> str:
    """Every migration as one script, for a DBA (what the automatic path runs)."""
    parts = [
        f"-- coins-sync state schema, version {LATEST}, for schema {schema}",
        "BEGIN;",
        bookkeeping_sql(schema).rstrip(),
    ]
    for version, sql in MIGRATIONS:
        parts.append(f"-- migration {version}")
        parts.append(render(version, sql, schema).rstrip())
        parts.append(
            f"INSERT INTO {schema}.schema_migrations (version, checksum) "
            f"VALUES ({version}, '{checksum(sql)}');"
        )
    parts.append("COMMIT;")
    return "\n".join(parts) + "\n"

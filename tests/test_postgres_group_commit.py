"""The postgres journal's group commit: many workers share one writer connection, and
each record is still committed before its ``append`` returns (an intent before its
create is sent; a result with its entry and audit row as one)."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg

from coins_sync.configs.model import RuleKey
from coins_sync.state.audit import AuditRecord
from coins_sync.state.journal import JournalKind, JournalRecord
from coins_sync.state.model import utc_now
from coins_sync.state.postgres import PostgresStateStore

WORKERS, PER_WORKER = 12, 15


def test_concurrent_appends_are_each_committed_before_they_return(
    pg_dsn: str, tmp_path: Path
) -> None:
    store = PostgresStateStore("team", "gc", dsn=pg_dsn, rescue_path=tmp_path / "rescue.jsonl")
    problems: list[str] = []
    with store.lock("test"):
        state, _ = store.recover()
        state = store.write(state)
        audit = store.audit_log({})
        journal = store.journal(state)

        def worker(n: int) -> None:
            with psycopg.connect(pg_dsn, autocommit=True) as other:

                def seen(sql: str, key: RuleKey) -> int:
                    row = other.execute(
                        sql, (key.company_id, key.configuration, key.event)
                    ).fetchone()
                    return int(row[0]) if row else -1

                for i in range(PER_WORKER):
                    key = RuleKey(f"CO{n:02d}", "DEFAULT", f"EVENT_{i}")
                    journal.append(JournalRecord(JournalKind.INTENT, key, 5, at=utc_now()))
                    if (
                        seen(
                            "SELECT count(*) FROM gc.operation WHERE company_id = %s "
                            "AND configuration = %s AND event = %s AND outcome IS NULL",
                            key,
                        )
                        != 1
                    ):
                        problems.append(f"{key}: intent not committed when append returned")
                    config_id = f"WCC{n:02d}{i:03d}"
                    audit.record(AuditRecord("create", key, "created", None, 5, config_id))
                    journal.append(
                        JournalRecord(JournalKind.RESULT, key, 5, "created", config_id, utc_now())
                    )
                    if (
                        seen(
                            "SELECT count(*) FROM gc.entry e JOIN gc.audit a "
                            "ON a.record->>'coinConfigId' = e.coin_config_id "
                            "WHERE e.company_id = %s AND e.configuration = %s AND e.event = %s "
                            "AND e.coin_config_id IS NOT NULL",
                            key,
                        )
                        != 1
                    ):
                        problems.append(f"{key}: result, entry or audit row not committed")

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        journal.close()
    assert not problems, problems[:5]
    final = store.read()
    assert len(final.entries) == WORKERS * PER_WORKER
    assert not final.uncertain
    assert len(list(store.read_audit())) == WORKERS * PER_WORKER

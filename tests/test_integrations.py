"""Many integrations in one data directory, each kept apart: the registry, which integration
a command acts on, the upgrade in place of a data directory made before integrations."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from pipeline.config import DataSettings, integration_folder
from pipeline.database import SCHEMA_VERSION, Store
from pipeline.search import IndexDoc, SearchIndex

# The schema version 2 (the release before integrations) created, as its Store.create() made
# it on SQLite, with one integration's rows: a candidate with a CV whose text was indexed.
V2_SCHEMA = """
CREATE TABLE candidates (id VARCHAR(64) NOT NULL, integration_id VARCHAR(200) NOT NULL,
    first_seen_at DATETIME NOT NULL, last_seen_at DATETIME, last_fetched_at DATETIME,
    fetch_error TEXT, remote_deleted_at DATETIME, not_found_at DATETIME, title TEXT,
    PRIMARY KEY (id));
CREATE TABLE texts (sha256 VARCHAR(64) NOT NULL, text TEXT NOT NULL, PRIMARY KEY (sha256));
CREATE TABLE runs (id INTEGER NOT NULL, kind VARCHAR(20) NOT NULL, started_at DATETIME NOT NULL,
    finished_at DATETIME, status VARCHAR(20) NOT NULL, counts JSON NOT NULL,
    errors JSON NOT NULL, warnings JSON NOT NULL, summary TEXT, PRIMARY KEY (id));
CREATE TABLE erasures (id INTEGER NOT NULL, candidate_id VARCHAR(64) NOT NULL,
    erased_at DATETIME NOT NULL, reason VARCHAR(100) NOT NULL, attachments INTEGER NOT NULL,
    PRIMARY KEY (id));
CREATE INDEX ix_erasures_candidate_id ON erasures (candidate_id);
CREATE TABLE settings ("key" VARCHAR(100) NOT NULL, value TEXT NOT NULL, PRIMARY KEY ("key"));
CREATE TABLE attachments (id VARCHAR(64) NOT NULL, integration_id VARCHAR(200) NOT NULL,
    candidate_id VARCHAR(64) NOT NULL, application_id VARCHAR(64), type VARCHAR(20) NOT NULL,
    remote_id TEXT, file_name TEXT, content_type TEXT, detected_type VARCHAR(200),
    remote_created_at DATETIME, remote_updated_at DATETIME, sha256 VARCHAR(64),
    size_bytes INTEGER, status VARCHAR(20) NOT NULL, error TEXT, parser VARCHAR(100),
    parser_version VARCHAR(100), page_count INTEGER, char_count INTEGER,
    language VARCHAR(16), fetched_at DATETIME, extracted_at DATETIME, indexed_at DATETIME,
    PRIMARY KEY (id),
    FOREIGN KEY(candidate_id) REFERENCES candidates (id) ON DELETE CASCADE);
CREATE INDEX ix_attachments_status ON attachments (status);
CREATE INDEX ix_attachments_candidate_id ON attachments (candidate_id);
CREATE INDEX ix_attachments_candidate_order ON attachments (candidate_id, id);
CREATE INDEX ix_attachments_sha256 ON attachments (sha256);
CREATE INDEX ix_attachments_type ON attachments (type);
CREATE INDEX ix_attachments_language ON attachments (language);
INSERT INTO settings VALUES ('schema_version', '2');
INSERT INTO settings VALUES ('nightly_watermark', '2026-05-01T10:00:00+00:00');
INSERT INTO candidates (id, integration_id, first_seen_at, title) VALUES
    ('cand-1', 'workday:OLD1', '2026-05-01 10:00:00.000000', 'Data engineer');
INSERT INTO texts VALUES ('{sha}', 'Kubernetes operator in Hamburg');
INSERT INTO attachments (id, integration_id, candidate_id, type, file_name, sha256, size_bytes,
    status, parser, char_count, language, fetched_at) VALUES
    ('att-1', 'workday:OLD1', 'cand-1', 'CV', 'cv.txt', '{sha}', {size}, 'indexed', 'text',
    30, 'en', '2026-05-01 10:00:00.000000');
INSERT INTO runs (id, kind, started_at, finished_at, status, counts, errors, warnings, summary)
    VALUES (1, 'nightly', '2026-05-01 10:00:00.000000', '2026-05-01 10:00:01.000000',
    'succeeded', '{{}}', '[]', '[]', 'nightly succeeded: ...');
INSERT INTO erasures (candidate_id, erased_at, reason, attachments) VALUES
    ('cand-0', '2026-04-01 10:00:00.000000', 'forget', 1);
"""
OLD_BYTES = b"Kubernetes operator in Hamburg"


def _version_2_data_directory(data: Path) -> str:
    """data/pipeline.db, data/index and data/files as the release before made them."""
    sha = hashlib.sha256(OLD_BYTES).hexdigest()
    data.mkdir(parents=True)
    db = sqlite3.connect(data / "pipeline.db")
    db.executescript(V2_SCHEMA.format(sha=sha, size=len(OLD_BYTES)))
    db.close()
    stored = data / "files" / sha[:2] / sha
    stored.parent.mkdir(parents=True)
    stored.write_bytes(OLD_BYTES)
    SearchIndex(data / "index").rebuild(
        [IndexDoc("att-1", "cand-1", None, "CV", "cv.txt", OLD_BYTES.decode(), sha, "en")]
    )
    return sha


def test_a_version_2_data_directory_upgrades_in_place(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    sha = _version_2_data_directory(data)
    # A read command brings it forward: its one integration comes from the rows.
    found = cli("search", "Kubernetes", "--json")
    assert found.code == 0, found.err
    hits = json.loads(found.out)["hits"]
    assert [h["attachment_id"] for h in hits] == ["att-1"]
    folder = data / "integrations" / integration_folder("workday:OLD1")
    assert (folder / "index").is_dir() and not (data / "index").exists()
    assert (folder / "files" / sha[:2] / sha).read_bytes() == OLD_BYTES
    assert not (data / "files").exists()
    store = Store(f"sqlite:///{data / 'pipeline.db'}")
    assert store.schema_version() == SCHEMA_VERSION
    assert [i.integration_id for i in store.integrations()] == ["workday:OLD1"]
    scoped = store.for_integration("workday:OLD1")
    assert scoped.watermark() == "2026-05-01T10:00:00+00:00"
    assert scoped.erasure_count() == 1 and len(scoped.recent_runs()) == 1
    assert scoped.texts_for(["att-1"]) == {"att-1": OLD_BYTES.decode()}
    store.close()
    status = cli("status")
    assert status.code == 0, status.err
    assert "attachments: 1, 1 indexed" in status.out
    check = cli("check")
    assert check.code == 0, check.out + check.err
    exported = cli("export")
    assert json.loads(exported.out)["integration_id"] == "workday:OLD1"


def test_which_integration_a_command_acts_on(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = Store(f"sqlite:///{tmp_path / 'data' / 'pipeline.db'}")
    store.ensure_schema()
    # A fresh data directory: read commands answer as for an empty one.
    assert cli("status").code == 0
    assert cli("forget", "cand-1").code == 2
    store.register_integration("personio:AAA", "Acme")
    assert cli("status").code == 0  # the only one
    store.register_integration("greenhouse:BBB", "Bolt")
    several = cli("search", "Python")
    assert several.code == 2
    assert "personio:AAA" in several.err and "greenhouse:BBB" in several.err
    assert cli("search", "Python", "--integration-id", "greenhouse:BBB").code == 0
    unknown = cli("status", "--integration-id", "lever:CCC")
    assert unknown.code == 2 and "unknown integration 'lever:CCC'" in unknown.err
    assert "personio:AAA" in unknown.err
    malformed = cli("status", "--integration-id", "bad id/../x")
    assert malformed.code == 2 and "malformed integration id" in malformed.err
    store.close()


def test_integration_folders_are_safe_and_distinct() -> None:
    names = {integration_folder(i) for i in ("workday:Ab", "workday:aB", "workday-Ab", "a:b:c")}
    assert len(names) == 4
    assert all(":" not in n and "/" not in n for n in names)
    data = DataSettings(Path("/d"), "sqlite:////d/pipeline.db")
    assert data.integration("workday:Ab").index_dir.parent.parent == Path("/d/integrations")

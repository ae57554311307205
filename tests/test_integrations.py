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
    kombo = {"KOMBO_API_KEY": "key-of-no-account", "KOMBO_BASE_URL": "http://127.0.0.1:9/v1"}
    nothing = cli("nightly", "--all", env=kombo)
    assert nothing.code == 2 and "no integration is registered" in nothing.err
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


# -- several integrations from one sandbox, run by nightly --all ------------------------------

SECOND = "greenhouse:Bx7Second0000000000000"
FAILING = "lever:Cx9Failing00000000000000"


def _ids_of(records: list[dict[str, object]], key: str) -> set[object]:
    return {r[key] for r in records}


def _export(cli, integration_id: str) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    done = cli("export", "--status", "all", "--integration-id", integration_id)
    assert done.code == 0, done.err
    return [json.loads(line) for line in done.out.splitlines()]


def test_nightly_all_keeps_each_integration_apart(  # type: ignore[no-untyped-def]
    cli, sandbox, world_template, tmp_path: Path, on_each_database
) -> None:
    from pipeline.sandbox.generator import World

    first = sandbox.integration_id
    twin = World(candidates=len(sandbox.world.candidates), seed=7)
    twin._bodies = dict(world_template._bodies)  # identical candidates and bytes
    sandbox.add_integration(SECOND, twin)
    failing = sandbox.add_integration(FAILING, candidates=2, seed=11, error="INTEGRATION.INACTIVE")
    # A Kombo answer of the first integration that names another integration's candidate.
    victim, stranger = sorted(sandbox.world.candidates)[0], sorted(failing.world.candidates)[0]
    sandbox.add_fault(kind="foreign", match=victim, times=None, value=stranger)
    for iid, name in ((first, "Acme"), (SECOND, "Bolt"), (FAILING, "Crux")):
        assert cli("integrations", "add", iid, "--name", name).code == 0

    ran = cli("nightly", "--all", env=sandbox.env())
    assert ran.code == 1, ran.out + ran.err
    lines = ran.out.splitlines()
    assert len(lines) == 4, ran.out
    (stopped,) = [line for line in lines if line.startswith(FAILING)]
    assert "stopped by INTEGRATION.INACTIVE" in stopped
    assert lines[-1].startswith("nightly --all finished: 3 integrations: 1 succeeded, 1 with")
    listed = json.loads(cli("integrations", "list", "--json").out)["integrations"]
    by_id = {i["integration_id"]: i for i in listed}
    assert by_id[FAILING]["state"] == "paused"
    assert "INTEGRATION.INACTIVE" in by_id[FAILING]["paused_reason"]
    assert by_id[first]["candidates"] == by_id[SECOND]["candidates"] == len(twin.candidates)

    # The foreign answer failed its candidate; nothing was recorded under the wrong one.
    mine, theirs = _export(cli, first), _export(cli, SECOND)
    assert stranger not in _ids_of(mine, "candidate_id") | _ids_of(theirs, "candidate_id")
    assert victim not in _ids_of(mine, "candidate_id") and victim in _ids_of(theirs, "candidate_id")
    assert _ids_of(mine, "integration_id") == {first}
    assert _ids_of(theirs, "integration_id") == {SECOND}

    # Identical documents, two records each: erase one candidate under the second only.
    someone = sorted(_ids_of(mine, "candidate_id"))[1]
    assert cli("forget", str(someone), "--integration-id", SECOND).code == 0
    theirs = _export(cli, SECOND)
    assert someone not in _ids_of(theirs, "candidate_id")
    assert someone in _ids_of(_export(cli, first), "candidate_id")
    cv = next(r for r in mine if r["candidate_id"] == someone and r["status"] == "indexed")
    words = str(cv["text"]).split()[:3]
    for iid, expected in ((first, True), (SECOND, False)):
        found = json.loads(
            cli(
                "search",
                " ".join(words),
                "--candidate",
                str(someone),
                "--json",
                "--integration-id",
                iid,
            ).out
        )
        assert bool(found["hits"]) is expected
        assert all(h["integration_id"] == iid for h in found["hits"])
        similar = cli("similar", str(cv["attachment_id"]), "--json", "--integration-id", iid)
        if expected:
            hits = json.loads(similar.out)["hits"]
            assert hits and all(h["integration_id"] == iid for h in hits)
        else:
            assert similar.code != 0 or not json.loads(similar.out)["hits"]
    status = {
        s["integration_id"]: s
        for s in json.loads(cli("status", "--all", "--json").out)["integrations"]
    }
    assert status[first]["erasures"] == 0 and status[SECOND]["erasures"] == 1
    for iid in (first, SECOND):  # each counts its own records, and only those
        assert sum(status[iid]["attachments"].values()) == len(_export(cli, iid))
    # The same bytes under two integrations are two files.
    data = tmp_path / "data"
    files = {
        iid: {
            p.name: p
            for p in (data / "integrations" / integration_folder(iid) / "files").rglob("*")
            if p.is_file()
        }
        for iid in (first, SECOND)
    }
    shared = set(files[first]) & set(files[SECOND])
    assert shared and all(not files[first][h].samefile(files[SECOND][h]) for h in shared)
    assert cli("check", "--all").code == 0

    # Still inactive: skipped with one line (one probing call). Answering again: taken back.
    again = cli("nightly", "--all", env=sandbox.env())
    assert f"{FAILING}: skipped: paused: INTEGRATION.INACTIVE" in again.out, again.out
    failing.set_error(None)
    back = cli("nightly", "--all", env=sandbox.env())
    line = next(line for line in back.out.splitlines() if line.startswith(FAILING))
    assert "nightly succeeded: 2 candidates" in line, back.out
    several = cli("search", "the", env={"KOMBO_INTEGRATION_ID": ""})
    assert several.code == 2 and FAILING in several.err  # several registered, none named


def test_removing_an_integration_erases_it_alone(cli, sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pipeline.lock import WriterLock

    sandbox.add_integration(SECOND, candidates=3, seed=5)
    env = sandbox.env()
    ids = sorted(sandbox.world.candidates)[:3]
    assert cli("ingest", *ids, env=env).code == 0
    second = sorted(sandbox.integration(SECOND).world.candidates)
    assert cli("ingest", *second, env={**env, "KOMBO_INTEGRATION_ID": SECOND}).code in (0, 1)
    data = tmp_path / "data"
    folder = data / "integrations" / integration_folder(SECOND)
    held = WriterLock(folder).__enter__()
    try:
        refused = cli("integrations", "remove", SECOND, "--yes")
        assert refused.code == 2 and "a run is going" in refused.err and "--wait" in refused.err
    finally:
        held.__exit__(None, None, None)
    removed = cli("integrations", "remove", SECOND, "--yes")
    assert removed.code == 0, removed.err
    assert f"{len(second)} candidates erased" in removed.out
    assert not folder.exists()
    listed = json.loads(cli("integrations", "list", "--json").out)["integrations"]
    assert [i["integration_id"] for i in listed] == [sandbox.integration_id]
    db = sqlite3.connect(data / "pipeline.db")
    for table in ("candidates", "attachments", "texts", "runs"):
        (left,) = db.execute(
            f"SELECT count(*) FROM {table} WHERE integration_id = ?", (SECOND,)
        ).fetchone()
        assert left == 0, table
    erasures = db.execute(
        "SELECT candidate_id, reason FROM erasures WHERE integration_id = ?", (SECOND,)
    ).fetchall()
    db.close()
    assert sorted(c for c, _ in erasures) == second
    assert {r for _, r in erasures} == {"integration removed"}
    assert len(_export(cli, sandbox.integration_id)) > 0  # the other one is whole
    unknown = cli("integrations", "remove", SECOND, "--yes")
    assert unknown.code == 2 and sandbox.integration_id in unknown.err

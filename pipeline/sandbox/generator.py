"""A seeded, deterministic world of candidates for the sandbox.

The same seed gives the same candidates, ids and files. The world knows which candidate has
which skill, city and language, so tests can check that search finds exactly the right
people. Document bodies are rendered lazily (and cached) by :mod:`.documents`.
"""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
EPOCH = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

# Skills are chosen so that none is a common word in any of the four languages, and no two
# share a token: a search for one finds exactly the candidates who have it.
SKILLS = (
    "Python",
    "Django",
    "Kubernetes",
    "Docker",
    "Terraform",
    "PostgreSQL",
    "TypeScript",
    "React",
    "Java",
    "Kotlin",
    "Golang",
    "Rust",
    "Scala",
    "Spark",
    "Kafka",
    "Airflow",
    "TensorFlow",
    "PyTorch",
    "Pandas",
    "GraphQL",
    "Angular",
    "Ansible",
    "Jenkins",
    "Redis",
    "Elasticsearch",
    "Snowflake",
    "Tableau",
    "Figma",
    "Salesforce",
    "SAP",
)
# Phrases for phrase queries: each stands whole in the CVs of those who have it.
PHRASES = ("machine learning", "data engineering", "site reliability", "product management")

LANGUAGES = ("en", "de", "fr", "es")
# As in a real talent pool, a few skills are common and most are rare.
POPULAR = frozenset(
    {"Python", "Kubernetes", "Docker", "PostgreSQL", "TypeScript", "Java", "React", "Terraform"}
)


def _weighted_sample(rng: random.Random, count: int) -> list[str]:
    weights = [5 if skill in POPULAR else 1 for skill in SKILLS]
    chosen: list[str] = []
    while len(chosen) < count:
        skill = rng.choices(SKILLS, weights)[0]
        if skill not in chosen:
            chosen.append(skill)
    return chosen


@dataclass(frozen=True)
class Locale:
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    cities: tuple[str, ...]
    titles: tuple[str, ...]
    employers: tuple[str, ...]
    domain_terms: tuple[str, ...]  # words in the candidate's own language, with accents
    schools: tuple[str, ...]


LOCALES: dict[str, Locale] = {
    "en": Locale(
        first_names=(
            "Olivia",
            "James",
            "Amelia",
            "Oliver",
            "Isla",
            "Harry",
            "Grace",
            "Noah",
            "Emily",
            "Jack",
            "Chloe",
            "Thomas",
        ),
        last_names=(
            "Smith",
            "Hughes",
            "Clarke",
            "Patel",
            "Walsh",
            "Turner",
            "Bennett",
            "Fletcher",
            "Morrison",
            "Whitaker",
            "Ashworth",
            "Pemberton",
        ),
        cities=("London", "Manchester", "Dublin", "Edinburgh", "Bristol", "Berlin"),
        titles=(
            "Software Engineer",
            "Data Scientist",
            "DevOps Engineer",
            "Backend Developer",
            "Platform Engineer",
        ),
        employers=(
            "Northwind Analytics",
            "Bluebell Systems",
            "Harbourline Ltd",
            "Kestrel Software",
        ),
        domain_terms=("stakeholder", "mentoring", "leadership"),
        schools=("University of Leeds", "Trinity College Dublin", "University of Bristol"),
    ),
    "de": Locale(
        first_names=(
            "Jürgen",
            "Björn",
            "Lena",
            "Jörg",
            "Sophie",
            "Maximilian",
            "Käthe",
            "Lukas",
            "Anja",
            "Günther",
            "Marie",
            "Felix",
        ),
        last_names=(
            "Müller",
            "Schröder",
            "Weiß",
            "Groß",
            "Köhler",
            "Krämer",
            "Schäfer",
            "Hoffmann",
            "Böhm",
            "Lehmann",
            "Fußmann",
            "Becker",
        ),
        cities=("München", "Köln", "Düsseldorf", "Zürich", "Berlin", "Nürnberg"),
        titles=(
            "Softwareentwickler",
            "Datenwissenschaftlerin",
            "Systemadministrator",
            "Entwicklungsingenieur",
        ),
        employers=(
            "Rheinwerk Digital GmbH",
            "Alpenblick Software AG",
            "Nordlicht IT GmbH",
            "Spreeufer Daten GmbH",
        ),
        domain_terms=("Teamfähigkeit", "Projektleitung", "Qualitätssicherung"),
        schools=("Technische Universität München", "Universität zu Köln", "ETH Zürich"),
    ),
    "fr": Locale(
        first_names=(
            "François",
            "Hélène",
            "Amélie",
            "Jérôme",
            "Céline",
            "Loïc",
            "Chloé",
            "Théo",
            "Inès",
            "Benoît",
            "Élodie",
            "Raphaël",
        ),
        last_names=(
            "Lefèvre",
            "Dubois",
            "Girard",
            "Moreau",
            "Bézier",
            "Côté",
            "Mercier",
            "Fontaine",
            "Rousseau",
            "Gauthier",
            "Lemaître",
            "Faure",
        ),
        cities=("Paris", "Lyon", "Genève", "Montréal", "Orléans", "Besançon"),
        titles=(
            "Ingénieur logiciel",
            "Développeuse backend",
            "Architecte cloud",
            "Chef de projet technique",
        ),
        employers=(
            "Société Générale des Données",
            "Éditions Numériques SA",
            "Lumière Tech",
            "Atelier Logiciel SARL",
        ),
        domain_terms=("développement", "équipe", "expérience"),
        schools=("École Polytechnique", "Université de Genève", "INSA Lyon"),
    ),
    "es": Locale(
        first_names=(
            "José",
            "María",
            "Lucía",
            "Álvaro",
            "Sofía",
            "Martín",
            "Begoña",
            "Íñigo",
            "Ramón",
            "Inés",
            "Joaquín",
            "Núria",
        ),
        last_names=(
            "García",
            "Núñez",
            "Martínez",
            "Peña",
            "Ibáñez",
            "Gómez",
            "Sánchez",
            "Muñoz",
            "Rodríguez",
            "López",
            "Fernández",
            "Jiménez",
        ),
        cities=("Madrid", "Barcelona", "Málaga", "Córdoba", "León", "Sevilla"),
        titles=(
            "Ingeniera de software",
            "Desarrollador backend",
            "Científico de datos",
            "Ingeniero de plataforma",
        ),
        employers=(
            "Soluciones Ibéricas SL",
            "Datos del Sur SA",
            "Tecnología Cantábrica",
            "Nube Mediterránea SL",
        ),
        domain_terms=("gestión", "ingeniería", "informática"),
        schools=(
            "Universidad Politécnica de Madrid",
            "Universitat de Barcelona",
            "Universidad de Sevilla",
        ),
    ),
}


@dataclass
class SandboxAttachment:
    id: str
    candidate_id: str
    application_id: str | None
    type: str  # CV, COVER_LETTER, OTHER
    remote_id: str
    file_name: str
    content_type: str
    kind: str  # pdf, docx, txt, png: what the bytes really are
    remote_created_at: datetime
    remote_updated_at: datetime
    revision: int = 0  # bumped when the sandbox "edits" the file
    same_as: str | None = None  # an attachment whose bytes these are (a duplicate copy)


@dataclass
class SandboxApplication:
    id: str
    remote_id: str
    job_id: str
    job_name: str
    changed_at: datetime


@dataclass
class SandboxCandidate:
    id: str
    remote_id: str
    first_name: str
    last_name: str
    language: str
    city: str
    title: str
    skills: list[str]
    phrases: list[str]
    employers: list[str]
    school: str
    years: int
    created_at: datetime
    changed_at: datetime
    deleted_at: datetime | None = None
    applications: list[SandboxApplication] = field(default_factory=list)
    attachments: list[SandboxAttachment] = field(default_factory=list)

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}"

    @property
    def email(self) -> str:
        import unicodedata

        def ascii_(s: str) -> str:
            return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode().lower()

        return f"{ascii_(self.first_name)}.{ascii_(self.last_name)}@example.org"

    @property
    def domain_terms(self) -> tuple[str, ...]:
        return LOCALES[self.language].domain_terms


def kombo_id(rng: random.Random) -> str:
    return "".join(rng.choice(BASE58) for _ in range(24))


# How CVs come: (kind, content_type, extension). Mostly honest, sometimes not.
_CV_FORMATS = (
    ("pdf", "application/pdf", ".pdf"),
    ("pdf", "application/pdf", ".pdf"),
    ("docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", ".docx"),
    ("pdf", "application/x-pdf", ".pdf"),  # Kombo's own example uses this
    ("docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", ".docx"),
    ("pdf", "application/pdf", ".pdf"),
    ("txt", "text/plain; charset=utf-8", ".txt"),
    ("pdf", "Application/PDF", ".pdf"),
    ("docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", ".docx"),
    ("pdf", "application/pdf", ".pdf"),
)
_LETTER_FORMATS = (
    ("docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", ".docx"),
    ("pdf", "application/pdf", ".pdf"),
    ("txt", "text/plain", ".txt"),
)
# The kinds of scanned CVs ``World(scans=n)`` adds, in turn (scans.py makes them).
SCAN_ORDER = ("scan300", "scan200", "photo", "photo-heic")
_FILE_WORDS = {
    "en": ("CV", "Cover Letter"),
    "de": ("Lebenslauf", "Anschreiben"),
    "fr": ("CV", "Lettre de motivation"),
    "es": ("CV", "Carta de presentación"),
}


class World:
    """All candidates of one sandbox; thread-safe for the server's readers."""

    def __init__(
        self,
        candidates: int = 20,
        seed: int = 7,
        cache_dir: Path | None = None,
        *,
        scans: int = 0,
    ) -> None:
        self.seed = seed
        # Rendered bodies kept on disk between sandbox runs (benchmarks): same seed, same bytes.
        self.cache_dir = cache_dir
        self.lock = threading.RLock()
        self.candidates: dict[str, SandboxCandidate] = {}
        self.attachments: dict[str, SandboxAttachment] = {}
        self._bodies: dict[tuple[str, int], bytes] = {}
        self._next_index = 0
        for _ in range(candidates):
            self.add_candidate()
        for number in range(scans):
            self.add_scanned_candidate(SCAN_ORDER[number % len(SCAN_ORDER)])

    # -- building ----------------------------------------------------------------------------

    def add_candidate(self, at: datetime | None = None) -> SandboxCandidate:
        with self.lock:
            index = self._next_index
            self._next_index += 1
            rng = random.Random(f"{self.seed}:{index}")
            language = LANGUAGES[index % len(LANGUAGES)]
            locale = LOCALES[language]
            created = at or EPOCH + timedelta(hours=index)
            skills = _weighted_sample(rng, rng.randint(3, 6))
            phrases = rng.sample(PHRASES, rng.randint(0, 2))
            candidate = SandboxCandidate(
                id=kombo_id(rng),
                remote_id=str(100000 + index),
                first_name=rng.choice(locale.first_names),
                last_name=rng.choice(locale.last_names),
                language=language,
                city=rng.choice(locale.cities),
                title=rng.choice(locale.titles),
                skills=skills,
                phrases=phrases,
                employers=rng.sample(locale.employers, 2),
                school=rng.choice(locale.schools),
                years=rng.randint(2, 15),
                created_at=created,
                changed_at=created,
            )
            for number in range(rng.randint(1, 2)):
                candidate.applications.append(
                    SandboxApplication(
                        id=kombo_id(rng),
                        remote_id=f"app-{index}-{number}",
                        job_id=kombo_id(rng),
                        job_name=rng.choice(locale.titles),
                        changed_at=created,
                    )
                )
            self._add_attachments(candidate, index, rng)
            self.candidates[candidate.id] = candidate
            for attachment in candidate.attachments:
                self.attachments[attachment.id] = attachment
            return candidate

    def add_scanned_candidate(self, kind: str, at: datetime | None = None) -> SandboxCandidate:
        """A candidate whose CV is a scan or a phone photo (``scans.SCAN_KINDS``) of its PDF."""
        from .scans import SCAN_KINDS

        content_type, ext = SCAN_KINDS[kind]
        with self.lock:
            candidate = self.add_candidate(at)
            cv = next(a for a in candidate.attachments if a.type == "CV" and not a.same_as)
            cv.kind, cv.content_type = kind, content_type
            cv.file_name = cv.file_name.rsplit(".", 1)[0] + ext
            for copy in candidate.attachments:
                if copy.same_as == cv.id:
                    copy.kind, copy.content_type, copy.file_name = kind, content_type, cv.file_name
            return candidate

    def _add_attachments(self, c: SandboxCandidate, index: int, rng: random.Random) -> None:
        cv_word, letter_word = _FILE_WORDS[c.language]
        kind, content_type, ext = _CV_FORMATS[index % len(_CV_FORMATS)]
        cv = SandboxAttachment(
            id=kombo_id(rng),
            candidate_id=c.id,
            application_id=None,
            type="CV",
            remote_id=f"file-{index}-cv",
            file_name=f"{c.full_name} {cv_word}{ext}",
            content_type=content_type,
            kind=kind,
            remote_created_at=c.created_at,
            remote_updated_at=c.created_at,
        )
        c.attachments.append(cv)
        if index % 3 != 2:
            kind, content_type, ext = _LETTER_FORMATS[index % len(_LETTER_FORMATS)]
            c.attachments.append(
                SandboxAttachment(
                    id=kombo_id(rng),
                    candidate_id=c.id,
                    application_id=c.applications[0].id,
                    type="COVER_LETTER",
                    remote_id=f"file-{index}-letter",
                    file_name=f"{letter_word} {c.last_name}{ext}",
                    content_type=content_type,
                    kind=kind,
                    remote_created_at=c.created_at,
                    remote_updated_at=c.created_at,
                )
            )
        if index % 5 == 4:
            # The ATS keeps a copy of the CV on the application too: same bytes, another id.
            c.attachments.append(
                SandboxAttachment(
                    id=kombo_id(rng),
                    candidate_id=c.id,
                    application_id=c.applications[-1].id,
                    type="CV",
                    remote_id=f"file-{index}-cv-copy",
                    file_name=cv.file_name,
                    content_type=cv.content_type,
                    kind=cv.kind,
                    remote_created_at=c.created_at,
                    remote_updated_at=c.created_at,
                    same_as=cv.id,
                )
            )
        if index % 7 == 6:
            c.attachments.append(
                SandboxAttachment(
                    id=kombo_id(rng),
                    candidate_id=c.id,
                    application_id=None,
                    type="OTHER",
                    remote_id=f"file-{index}-photo",
                    file_name="photo.png",
                    content_type="image/png",
                    kind="png",
                    remote_created_at=c.created_at,
                    remote_updated_at=c.created_at,
                )
            )

    # -- changes, for nightly runs -----------------------------------------------------------

    def touch(self, candidate_id: str, at: datetime) -> None:
        """Edit the candidate's CV (new revision, one more skill) and move its changed_at."""
        with self.lock:
            candidate = self.candidates[candidate_id]
            candidate.changed_at = at
            # The edit teaches the candidate a new skill, so the new text is searchable.
            new = next((s for s in SKILLS if s not in candidate.skills), None)
            if new is not None:
                candidate.skills.append(new)
            for attachment in candidate.attachments:
                if attachment.type == "CV":
                    attachment.revision += 1
                    attachment.remote_updated_at = at

    def delete(self, candidate_id: str, at: datetime) -> None:
        with self.lock:
            candidate = self.candidates[candidate_id]
            candidate.deleted_at = at
            candidate.changed_at = at

    def remove_attachment(self, attachment_id: str, at: datetime) -> None:
        with self.lock:
            attachment = self.attachments.pop(attachment_id)
            candidate = self.candidates[attachment.candidate_id]
            candidate.attachments = [a for a in candidate.attachments if a.id != attachment_id]
            candidate.changed_at = at

    # -- reading -----------------------------------------------------------------------------

    def ordered(self) -> list[SandboxCandidate]:
        with self.lock:
            return sorted(self.candidates.values(), key=lambda c: (c.created_at, c.id))

    def body(self, attachment_id: str) -> bytes:
        from .documents import render

        with self.lock:
            attachment = self.attachments[attachment_id]
            source = self.attachments.get(attachment.same_as or "", attachment)
            key = (source.id, source.revision)
            cached = self._bodies.get(key)
        if cached is not None:
            return cached
        disk = self._cache_path(source)
        if disk is not None and disk.is_file():
            body = disk.read_bytes()
        else:
            body = render(self.candidates[source.candidate_id], source)
            if disk is not None:
                disk.parent.mkdir(parents=True, exist_ok=True)
                tmp = disk.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_bytes(body)
                os.replace(tmp, disk)
        with self.lock:
            self._bodies[key] = body
        return body

    def _cache_path(self, attachment: SandboxAttachment) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.seed}-{attachment.id}-{attachment.revision}.bin"

    def warm(self, processes: int | None = None) -> None:
        """Render every body now (in parallel), so that serving them costs nothing."""
        ids = [a.id for a in self.attachments.values() if not a.same_as]
        if self.cache_dir is None or (processes or 1) <= 1:
            for attachment_id in ids:
                self.body(attachment_id)
            return
        import multiprocessing

        global _WARMING
        _WARMING = self  # forked workers inherit it: a World with locks does not pickle
        context = multiprocessing.get_context("fork")
        try:
            # The workers take SIGTERM's default back: forked from a command that turns it
            # into a stopped run, Pool.terminate() printed a traceback per worker.
            with context.Pool(processes, initializer=_default_sigterm) as pool:
                pool.map(_render_into_cache, ids, chunksize=16)
        finally:
            _WARMING = None
        for attachment_id in ids:
            self.body(attachment_id)

    # -- ground truth for tests --------------------------------------------------------------

    def live(self) -> list[SandboxCandidate]:
        return [c for c in self.ordered() if c.deleted_at is None]

    def with_skill(self, skill: str) -> set[str]:
        return {c.id for c in self.live() if skill in c.skills}

    def with_phrase(self, phrase: str) -> set[str]:
        return {c.id for c in self.live() if phrase in c.phrases}

    def in_city(self, city: str) -> set[str]:
        return {c.id for c in self.live() if c.city == city}

    def in_language(self, language: str) -> set[str]:
        return {c.id for c in self.live() if c.language == language}


_WARMING: World | None = None


def _default_sigterm() -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _render_into_cache(attachment_id: str) -> None:
    assert _WARMING is not None
    _WARMING.body(attachment_id)

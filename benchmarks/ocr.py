"""OCR speed: pages per second of Tesseract (through the extract stage, as a run calls it) on
the sandbox's scanned CVs and phone photos, on one core and on every core, beside `pdftotext`
and pypdf on the same documents' born-digital twins; and the share of a run's CPU that OCR
takes when one CV in twenty is a scan.

    python benchmarks/ocr.py [--documents 8] [--run-cpu-per-candidate 0.012]

The run's CPU per candidate without OCR (listing, download, pypdf, SQLite, the index: about
12 ms) is the end-to-end benchmark's figure (benchmarks/README.md); the share is then
    scans x OCR CPU / (scans x OCR CPU + candidates x that figure), scans = candidates / 20.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
# The end-to-end benchmark's CPU per candidate without OCR (benchmarks/README.md, 2026-12-01:
# 21-24 CPU-s for 2,000 candidates, the sandbox's own left out).
RUN_CPU_PER_CANDIDATE = 0.012


def documents(count: int, folder: Path) -> list[dict]:
    """``count`` scanned CVs (in SCAN_ORDER's turn) and their born-digital twins, on disk."""
    from pipeline.sandbox.documents import cv_blocks, render_pdf
    from pipeline.sandbox.generator import World

    world = World(candidates=0, seed=7, scans=count)
    rows = []
    for candidate in world.ordered():
        cv = next(a for a in candidate.attachments if a.type == "CV" and not a.same_as)
        scan = folder / f"{cv.id}{Path(cv.file_name).suffix}"
        scan.write_bytes(world.body(cv.id))
        twin = folder / f"{cv.id}-twin.pdf"
        twin.write_bytes(render_pdf(cv_blocks(candidate)))
        rows.append({"kind": cv.kind, "scan": scan, "type": cv.content_type, "twin": twin})
    return rows


def measure(count: int, run_cpu_per_candidate: float) -> dict:
    from pipeline.extract import extract_file
    from pipeline.extract.pool import ProcessExtractor

    with tempfile.TemporaryDirectory() as tmp:
        docs = documents(count, Path(tmp))
        extract_file(docs[0]["twin"], "application/pdf", "warm.pdf")  # imports, language model
        one_core_s, ocr_cpu_s, pages, per_kind = 0.0, 0.0, 0, {}
        for doc in docs:
            result = extract_file(doc["scan"], doc["type"], doc["scan"].name)
            one_core_s += result.seconds
            ocr_cpu_s += result.cpu_seconds
            pages += result.ocr_pages
            per_kind.setdefault(doc["kind"], []).append(round(result.seconds, 2))
        cores = os.cpu_count() or 1
        extractor = ProcessExtractor(workers=cores, timeout=300)
        try:
            extractor.submit(docs[0]["twin"], "application/pdf", "warm.pdf").result()
            started = time.perf_counter()
            futures = [extractor.submit(d["scan"], d["type"], d["scan"].name) for d in docs]
            all_pages = sum(f.result().ocr_pages for f in futures)
            every_core_s = time.perf_counter() - started
        finally:
            extractor.close()
        twin_pages, pypdf_s, pdftotext_s = 0, 0.0, 0.0
        pdftotext = shutil.which("pdftotext")
        for doc in docs:
            result = extract_file(doc["twin"], "application/pdf", doc["twin"].name)
            twin_pages += result.page_count or 0
            pypdf_s += result.seconds
            if pdftotext:
                started = time.perf_counter()
                subprocess.run([pdftotext, "-q", str(doc["twin"]), "-"], capture_output=True)
                pdftotext_s += time.perf_counter() - started
    ocr_cpu_per_scan = ocr_cpu_s / len(docs)
    candidates = 2000
    scans = candidates / 20
    share = (
        scans * ocr_cpu_per_scan / (scans * ocr_cpu_per_scan + candidates * run_cpu_per_candidate)
    )
    return {
        "documents": len(docs),
        "pages": pages,
        "seconds_per_document_by_kind": per_kind,
        "ocr_pages_per_s_one_core": round(pages / one_core_s, 3),
        "ocr_cpu_s_per_page": round(ocr_cpu_s / max(pages, 1), 2),
        "ocr_pages_per_s_every_core": round(all_pages / every_core_s, 3),
        "cores": cores,
        "pypdf_pages_per_s_twins": round(twin_pages / pypdf_s, 1),
        "pdftotext_pages_per_s_twins": round(twin_pages / pdftotext_s, 1) if pdftotext_s else None,
        "run_cpu_per_candidate_s": run_cpu_per_candidate,
        "ocr_share_of_run_cpu_one_in_twenty": round(share, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=8)
    parser.add_argument("--run-cpu-per-candidate", type=float, default=RUN_CPU_PER_CANDIDATE)
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "ocr.json")
    args = parser.parse_args()
    result = measure(args.documents, args.run_cpu_per_candidate)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

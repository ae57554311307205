"""Extraction speed: pages per second for the corpus PDFs with pypdf, beside the same files
through `pdftotext` (Debian's poppler-utils) as a reference, and the ratio.

    python benchmarks/extraction.py [--corpus ../shared/corpus]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

import pypdf

ROOT = Path(__file__).resolve().parent


def pypdf_pages(path: Path) -> int | None:
    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            return None
        for page in reader.pages:
            page.extract_text()
        return len(reader.pages)
    except Exception:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT.parent.parent / "shared" / "corpus")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "extraction.json")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    pdftotext = shutil.which("pdftotext")
    files = sorted(args.corpus.rglob("*.pdf"))
    rows = []
    for path in files:
        started = time.perf_counter()
        pages = pypdf_pages(path)
        pypdf_s = time.perf_counter() - started
        if not pages:
            continue
        reference_s = None
        if pdftotext:
            started = time.perf_counter()
            done = subprocess.run(
                [pdftotext, "-q", str(path), "-"], capture_output=True, check=False
            )
            reference_s = time.perf_counter() - started if done.returncode == 0 else None
        rows.append(
            {
                "file": str(path.relative_to(args.corpus)),
                "pages": pages,
                "pypdf_s": round(pypdf_s, 4),
                "pdftotext_s": round(reference_s, 4) if reference_s else None,
            }
        )
    pages = sum(r["pages"] for r in rows)
    pypdf_total = sum(r["pypdf_s"] for r in rows)
    both = [r for r in rows if r["pdftotext_s"]]
    print(f"{len(rows)} readable PDFs, {pages} pages")
    print(f"pypdf:     {pages / pypdf_total:8.1f} pages/s ({pypdf_total:.2f} s)")
    if both:
        ref_pages = sum(r["pages"] for r in both)
        ref_total = sum(r["pdftotext_s"] for r in both)
        mine = sum(r["pypdf_s"] for r in both)
        print(
            f"pdftotext: {ref_pages / ref_total:8.1f} pages/s ({ref_total:.2f} s, a process "
            "per file included)"
        )
        print(f"ratio pypdf / pdftotext speed: {(ref_pages / mine) / (ref_pages / ref_total):.3f}")
    else:
        print("pdftotext: not installed (apt-get install poppler-utils)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

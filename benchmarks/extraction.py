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


def measure(files: list[Path], root: Path | None = None) -> dict:
    """pypdf and pdftotext over the same readable PDFs: pages per second and the ratio."""
    logging.disable(logging.WARNING)
    pdftotext = shutil.which("pdftotext")
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
                "file": str(path.relative_to(root)) if root else path.name,
                "pages": pages,
                "pypdf_s": round(pypdf_s, 4),
                "pdftotext_s": round(reference_s, 4) if reference_s else None,
            }
        )
    logging.disable(logging.NOTSET)
    both = [r for r in rows if r["pdftotext_s"]]
    pages = sum(r["pages"] for r in both)
    pypdf_s = sum(r["pypdf_s"] for r in both)
    reference_s = sum(r["pdftotext_s"] for r in both)
    return {
        "files": len(both),
        "pages": pages,
        "pypdf_pages_per_s": round(pages / pypdf_s, 1) if pypdf_s else None,
        "pdftotext_pages_per_s": round(pages / reference_s, 1) if reference_s else None,
        "pypdf_over_pdftotext_speed": round(reference_s / pypdf_s, 3) if pypdf_s else None,
        "pdftotext": bool(pdftotext),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT.parent.parent / "shared" / "corpus")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "extraction.json")
    args = parser.parse_args()
    result = measure(sorted(args.corpus.rglob("*.pdf")), args.corpus)
    print(f"{result['files']} readable PDFs, {result['pages']} pages")
    print(f"pypdf:     {result['pypdf_pages_per_s']} pages/s")
    if result["pdftotext"]:
        print(f"pdftotext: {result['pdftotext_pages_per_s']} pages/s (a process per file)")
        print(f"ratio pypdf / pdftotext speed: {result['pypdf_over_pdftotext_speed']}")
    else:
        print("pdftotext: not installed (apt-get install poppler-utils)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Ingest throughput (files/s) as a ratio to a bare `pydicom.dcmread(stop_before_pixels=True)`
loop over the same files, both measured in the same run. Goal: ratio >= 0.7.

    .venv/bin/python bench/bench_ingest.py [--copies N] [--repeat N] [--profile]

The corpus is pydicom's own test files that are DICOM with Study/Series/SOP Instance UIDs,
plus synthesized copies of them (each with a new SOPInstanceUID, written by pydicom) so that
there are at least 2,000 files (a few CT series' worth: throughput is measured where ingest's
fixed costs, starting its workers and writing the catalogue once, weigh as little as in a real
ingest); the output says how many were synthesized. `--copies 3` gives the 569-file corpus
where those fixed costs show. The two loops alternate, run after run, and the figure is the
median of the runs' own ratios, so that the machine's drifting speed touches both alike.

Leave a few minutes after deleting many files (this benchmark's own clean-up included) before
running it: for that long ext4 skips recently freed inodes one by one when it creates a file,
which tripled ingest's kernel time here and says nothing about ingest.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from imaging_commons.config import Archive  # noqa: E402
from imaging_commons.core.catalog import Catalog  # noqa: E402
from imaging_commons.core.demo import pydicom_sample_dir  # noqa: E402
from imaging_commons.core.ingest import ingest  # noqa: E402

GOAL = 0.7
MIN_FILES = 2000
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def usable_samples() -> list[Path]:
    """pydicom's test files that read as DICOM with all three UIDs, deliberately cut ones
    excluded: the files both loops should succeed on."""
    usable = []
    for path in sorted(pydicom_sample_dir().rglob("*")):
        if not path.is_file() or "truncated" in path.name:
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if all(ds.get(k) for k in UID_KEYWORDS):
            usable.append(path)
    return usable


def build_corpus(dest: Path, copies: int) -> tuple[list[Path], int]:
    """The usable samples, then `copies` rounds of copies with fresh SOPInstanceUIDs, until
    there are at least MIN_FILES files. Returns (files, number synthesized)."""
    samples = usable_samples()
    files = []
    for path in samples:
        files.append(dest / f"orig-{len(files):04d}.dcm")
        files[-1].write_bytes(path.read_bytes())
    rounds = copies if copies >= 0 else -(-MIN_FILES // len(samples)) - 1
    synthesized = 0
    for round_no in range(rounds):
        for path in samples:
            ds = pydicom.dcmread(path)
            ds.SOPInstanceUID = generate_uid()
            if "MediaStorageSOPInstanceUID" in ds.file_meta:
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            out = dest / f"copy{round_no}-{synthesized:05d}.dcm"
            try:
                ds.save_as(out)
            except Exception:  # an odd sample pydicom cannot write back: leave it out
                out.unlink(missing_ok=True)
                continue
            files.append(out)
            synthesized += 1
    return files, synthesized


def settled(files: list[Path]) -> None:
    """Start every timed run from the same state: the blobs the last ingest wrote flushed (the
    kernel writes them out over the next seconds, and that work would land in whichever run
    came next) and the corpus read back into the page cache (this machine's memory manager
    evicts idle file pages within seconds, so a run would otherwise read some files from the
    disk, by chance). Both were most of the run-to-run noise."""
    os.sync()
    for f in files:
        f.read_bytes()


def bare_loop(files: list[Path]) -> float:
    settled(files)
    start = time.perf_counter()
    for f in files:
        pydicom.dcmread(f, stop_before_pixels=True)
    return time.perf_counter() - start


def ingest_once(folder: Path, files: list[Path], scratch: Path, expected_rows: int,
                profile: bool = False) -> float:
    """Ingest `folder` into a fresh archive; check every file became a row. With `profile`,
    print where the time went (cProfile, by cumulative time)."""
    catalog = Catalog(Archive(Path(tempfile.mkdtemp(dir=scratch))))
    profiler = cProfile.Profile() if profile else contextlib.nullcontext()
    settled(files)
    start = time.perf_counter()
    with profiler:
        report = ingest(catalog, [folder], "bench", progress=False)
    elapsed = time.perf_counter() - start
    if profile:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    if report.skipped or report.ingested != expected_rows:
        raise SystemExit(f"ingest staged {report.ingested} of {expected_rows} files "
                         f"({len(report.skipped)} skipped): the figure would be meaningless")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=-1,
                        help="rounds of synthesized copies (default: enough for 2,000 files)")
    parser.add_argument("--repeat", type=int, default=7,
                        help="runs of each, alternating (default 7)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one extra ingest run and print the top entries")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # pydicom's remarks on odd samples

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        corpus = scratch / "corpus"
        corpus.mkdir()
        files, synthesized = build_corpus(corpus, args.copies)
        distinct = len({str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                        for f in files})
        runs = [(bare_loop(files), ingest_once(corpus, files, scratch, distinct))
                for _ in range(args.repeat)]
        if args.profile:
            ingest_once(corpus, files, scratch, distinct, profile=True)

    # the ratio of each run (a bare loop and the ingest right after it), then their median:
    # the machine's speed drifts by tens of percent over seconds, and a ratio of two figures
    # taken moments apart is far steadier than one of two bests taken at different moments
    ratios = [bare / ingested for bare, ingested in runs]
    ratio = statistics.median(ratios)
    base_rate = len(files) / statistics.median(bare for bare, _ in runs)
    ingest_rate = len(files) / statistics.median(ingested for _, ingested in runs)
    print(f"corpus: {len(files)} files ({len(files) - synthesized} pydicom test files, "
          f"synthesized {synthesized} copies with new SOPInstanceUIDs; "
          f"{distinct} distinct instances); {args.repeat} runs of each, medians")
    print(f"bare pydicom.dcmread(stop_before_pixels=True) loop: {base_rate:8.1f} files/s")
    print(f"ingest (read, md5, store, stage rows):              {ingest_rate:8.1f} files/s")
    verdict = "ok" if ratio >= GOAL else "BELOW GOAL"
    print(f"ratio ingest / bare read, median of the runs' ratios "
          f"({', '.join(f'{r:.2f}' for r in ratios)}): {ratio:.2f} (goal >= {GOAL}) {verdict}")
    print("reproduce: .venv/bin/python bench/bench_ingest.py")
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())

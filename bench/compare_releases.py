"""Paging the IDC manifest, this checkout's server against another checkout's, both running at
once over the same archive and taking turns, run after run.

    git worktree add /tmp/base <revision>
    .venv/bin/python bench/compare_releases.py --archive PATH --base /tmp/base [--runs 25]

A change worth a few milliseconds hides in the spread of single benchmark runs (±15 % here);
paired runs of two servers side by side show it. Two identical checkouts compared this way:
median ratio 1.001 over 25 runs (12 faster); over 10 runs it strayed to 1.06 once.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_idc_api import BIG, cold, page_all  # noqa: E402
from serving import running_server  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", required=True, help="an archive with the IDC catalogue imported")
    ap.add_argument("--base", required=True, type=Path, help="the other checkout (its src/)")
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--page-size", type=int, default=65536)
    ap.add_argument("--port", type=int, default=8766, help="this checkout's; the base's is +1")
    args = ap.parse_args()
    filters, fields = BIG
    env = {"IMAGING_COMMONS_MAX_PAGE_SIZE": str(max(args.page_size, 65536))}
    with ExitStack() as stack:
        servers = {name: stack.enter_context(running_server(
                       Path(args.archive), args.port + i, "/v1/about", env, root))
                   for i, (name, root) in enumerate((("this", ROOT), ("base", args.base)))}
        sessions = {name: requests.Session() for name in servers}
        times: dict[str, list[float]] = {name: [] for name in servers}
        for run in range(args.runs + 1):
            # alternate which goes first, so that neither always follows the other's garbage
            for name in (("this", "base") if run % 2 else ("base", "this")):
                start = time.perf_counter()
                rows, _ = page_all(sessions[name], servers[name], cold(filters), fields,
                                   args.page_size)
                if run:  # the first run of each loads the catalogue's segments
                    times[name].append(time.perf_counter() - start)
    ratios = [t / b for t, b in zip(times["this"], times["base"])]
    faster = sum(r < 1 for r in ratios)
    print(f"paging {rows} rows ({filters}), page_size {args.page_size}, {args.runs} paired runs:\n"
          f"  base {statistics.median(times['base']) * 1000:.1f} ms, this "
          f"{statistics.median(times['this']) * 1000:.1f} ms (medians)\n"
          f"  this / base: median {statistics.median(ratios):.3f}, this faster in "
          f"{faster} of {len(ratios)}, median difference "
          f"{statistics.median(t - b for t, b in zip(times['this'], times['base'])) * 1000:+.1f}"
          " ms")
    print(f"\nreproduce: .venv/bin/python bench/compare_releases.py --archive {args.archive} "
          f"--base {args.base} --runs {args.runs} --page-size {args.page_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

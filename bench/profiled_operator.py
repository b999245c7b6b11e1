"""Run the operator (``octoconn run ...``) under cProfile and tracemalloc, for ``operator_scale.py --profile``.

    python bench/profiled_operator.py OUTDIR run --standalone ...

SIGUSR1 writes a tracemalloc snapshot summary (top allocation sites by size) to OUTDIR/memory-<n>.txt; the CPU profile
is written to OUTDIR/cpu.prof when the operator exits (read it with ``python -m pstats``).
"""

from __future__ import annotations

import cProfile
import signal
import sys
import threading
import tracemalloc
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(8)
    dumps = iter(range(1, 1000))

    def dump(signum: int, frame: FrameType | None) -> None:
        # A thread of its own: taking a snapshot of a large heap inside a signal handler would stall the loop less.
        def write() -> None:
            snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            current, peak = tracemalloc.get_traced_memory()
            lines = [f"traced {current / 2**20:.1f} MiB (peak {peak / 2**20:.1f} MiB)", "", "by file:"]
            lines += [str(stat) for stat in snapshot.statistics("filename")[:25]]
            lines += ["", "by line:"]
            lines += [str(stat) for stat in snapshot.statistics("lineno")[:40]]
            lines += ["", "by traceback (top 8):"]
            for stat in snapshot.statistics("traceback")[:8]:
                lines += [f"{stat.size / 2**10:.0f} KiB in {stat.count} blocks", *stat.traceback.format(), ""]
            (out / f"memory-{next(dumps)}.txt").write_text("\n".join(lines))

        threading.Thread(target=write, daemon=True).start()

    signal.signal(signal.SIGUSR1, dump)
    from octoconn.cli import main as octoconn_main

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(octoconn_main, sys.argv[2:])
    finally:
        profiler.dump_stats(out / "cpu.prof")


if __name__ == "__main__":
    sys.exit(main())

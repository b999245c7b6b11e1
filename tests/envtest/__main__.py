"""Run a local control plane (etcd + kube-apiserver) until Ctrl-C or SIGTERM: ``python -m tests.envtest``.

Prints the kubeconfig to use (``export KUBECONFIG=...``), where the binaries are cached and the process ids, then
keeps running. The state folder (default ``.cluster/`` in the repository) keeps certificates, the kubeconfig and
logs after exit; each start begins with an empty cluster.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from tests.envtest.binaries import cache_dir, ensure_binaries
from tests.envtest.controlplane import ControlPlane

REPO_ROOT = Path(__file__).resolve().parents[2]
_WATCH_INTERVAL = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.envtest", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, default=REPO_ROOT / ".cluster", help="state folder (default: .cluster/ in the repo)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness probe is noise

    stop = threading.Event()
    received: list[int] = []
    starting = True

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()
        if starting:
            # Abort a start-up that may take a minute; ControlPlane.start() stops what it began.
            raise KeyboardInterrupt

    # Installed before the control plane starts, so a Ctrl-C during start-up also ends in a clean stop.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    try:
        binaries = ensure_binaries()
        plane = ControlPlane(args.dir, binaries=binaries)
        plane.start()
    except RuntimeError as exc:  # ControlPlaneError, or a failed build of the binaries
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted during start-up; stopped", file=sys.stderr)
        return 130
    starting = False
    try:
        assert plane.workdir is not None
        pids = ", ".join(f"{name} {pid}" for name, pid in plane.pids.items())
        print(f"pids: {pids}")
        print(f"state and logs: {plane.workdir}")
        print(f"binaries cached in {cache_dir() / 'bin'} (kubectl: {binaries.kubectl})")
        print(f"export PATH={binaries.kubectl.parent}:$PATH")
        print(f"export KUBECONFIG={plane.kubeconfig}")
        print(f"KUBECONFIG={plane.kubeconfig}")
        print("Press Ctrl-C to stop.", flush=True)
        # Waking up periodically notices a crashed child instead of advertising a dead cluster forever.
        while not stop.wait(_WATCH_INTERVAL):
            for proc in (plane.etcd, plane.apiserver):
                if proc is not None and proc.exited() is not None:
                    print(f"error: {proc.name} exited; last lines of {proc.log_path}:", file=sys.stderr)
                    print(proc.log_tail(), file=sys.stderr)
                    return 1
    finally:
        plane.stop()
    name = signal.Signals(received[0]).name if received else "?"
    print(f"stopped ({name})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

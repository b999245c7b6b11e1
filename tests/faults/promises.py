"""The four promises every fault test checks, and the fleet of resources they are checked on.

- no duplicate: each connection name exists once in the Infisical test server;
- nothing lost: each resource's last key is the one in Infisical, and its status equals Infisical's row;
- the process keeps serving: same pid, liveness 200, and a change made after the fault is acted on;
- a true condition while the fault lasts: ``Unknown`` with a reason, never ``False`` and never a green ``Ready`` for
  work that cannot have been done.

Figures (how long a recovery took, how many requests a storm cost) are printed with ``report``, never asserted.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from octoconn.models import GROUP, PLURAL, VERSION
from tests.cluster.conftest import Kube
from tests.cluster.operator_process import OperatorProcess
from tests.faults.rig import Rig
from tests.servers.infisical import CONNECTIONS_PREFIX, OCTOPUS_APP

CREATE_PATH = f"{CONNECTIONS_PREFIX}/{OCTOPUS_APP}"


# Every figure of the run, in order: the tier's conftest lists them in pytest's summary, so CI's log shows them.
FIGURES: list[str] = []


def report(figure: str) -> None:
    """A measured figure for docs/reliability.md: printed (``pytest -s``), and listed in the summary, never asserted."""
    FIGURES.append(figure)
    print(f"\nfault figure: {figure}", flush=True)


@dataclass
class Fleet:
    """The resources of one test and what each should end with: its connection name, its key and its URL."""

    kube: Kube
    rig: Rig
    keys: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    def unique(self, name: str) -> str:
        """A connection name of this test's own: Infisical names are unique per organisation, shared by the tier."""
        return f"{name}-{self.kube.namespace.rsplit('-', 1)[-1]}"

    def create(self, name: str, *, url: str | None = None) -> None:
        key = self.rig.new_key()
        self.kube.put_secret(f"{name}-key", {"apiKey": key})
        instance = url or self.rig.octopus_a.url()
        unique = self.unique(name)
        ref = {"name": f"{name}-key"}
        self.kube.apply_odc(name, {"instanceUrl": instance, "apiKeySecretRef": ref, "connectionName": unique})
        self.keys[name], self.names[name], self.urls[name] = key, unique, instance

    def create_many(self, prefix: str, count: int, **kwargs: Any) -> list[str]:
        made = [f"{prefix}-{i}" for i in range(count)]
        for name in made:
            self.create(name, **kwargs)
        return made

    def rotate(self, name: str) -> None:
        key = self.rig.new_key()
        self.kube.put_secret(f"{name}-key", {"apiKey": key})
        self.keys[name] = key

    def rename(self, name: str, new_name: str) -> None:
        self.kube.patch_odc(name, {"spec": {"connectionName": self.unique(new_name)}})
        self.names[name] = self.unique(new_name)

    def objects(self) -> dict[str, dict[str, Any]]:
        listed = self.kube.custom.list_namespaced_custom_object(GROUP, VERSION, self.kube.namespace, PLURAL)
        return {o["metadata"]["name"]: o for o in listed["items"] if o["metadata"]["name"] in self.keys}

    def settled(self, obj: dict[str, Any]) -> bool:
        """Ready at its generation, with its current Secret and name pushed."""
        status = obj.get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
        name = obj["metadata"]["name"]
        secret_version = self.kube.secret(f"{name}-key").metadata.resource_version
        return bool(
            ready
            and ready["status"] == "True"
            and status.get("observedGeneration") == obj["metadata"]["generation"]
            and status.get("secretResourceVersion") == secret_version
            and status.get("connectionName") == self.names[name]
        )

    def wait_settled(self, timeout: float = 120, names: Iterable[str] | None = None) -> float:
        """Wait until every resource (or ``names``) is settled; return the seconds it took."""
        wanted = set(names or self.keys)
        started = time.monotonic()
        deadline = started + timeout
        pending: set[str] = wanted
        while time.monotonic() < deadline:
            objects = self.objects()
            pending = {n for n in wanted if n not in objects or not self.settled(objects[n])}
            if not pending:
                return time.monotonic() - started
            time.sleep(0.5)
        objects = self.objects()
        sample = {n: (objects.get(n) or {}).get("status", {}).get("conditions") for n in sorted(pending)[:3]}
        raise AssertionError(f"{len(pending)} of {len(wanted)} never settled; e.g. {sample}")


def assert_no_duplicates(fleet: Fleet) -> None:
    counts = collections.Counter(c["name"] for c in fleet.rig.infisical.state.connections())
    wanted = set(fleet.names.values())
    duplicated = {name: n for name, n in counts.items() if name in wanted and n > 1}
    missing = sorted(name for name in wanted if counts[name] == 0)
    assert duplicated == {}, f"duplicate connections: {duplicated}"
    assert missing == [], f"connections missing from Infisical: {missing}"


def assert_nothing_lost(fleet: Fleet) -> None:
    """Every resource's last key and name are in Infisical, and its status is Infisical's row."""
    objects = fleet.objects()
    assert set(objects) == set(fleet.keys)
    for name, obj in objects.items():
        status = obj["status"]
        row = fleet.rig.infisical.state.connection(status["id"])
        assert row is not None, f"{name}: status.id {status['id']} is not in Infisical"
        assert row["name"] == status["connectionName"] == fleet.names[name], name
        assert row["_credentials"]["apiKey"] == fleet.keys[name], f"{name}: Infisical holds an older key"
        assert row["credentialsHash"] == status["credentialsHash"], name
        assert row["credentials"]["instanceUrl"] == status["instanceUrl"], name
        assert status.get("pendingCreate") is None, name


def assert_keeps_serving(fleet: Fleet, operator: OperatorProcess, pid: int, probe_name: str) -> float:
    """Same process, alive, and a resource created now becomes Ready; return how long that took."""
    assert operator.popen is not None
    assert operator.popen.pid == pid, "the operator process was replaced"
    assert operator.popen.poll() is None, "the operator process exited"
    url = f"http://127.0.0.1:{operator.liveness_port}/healthz"
    assert httpx.get(url, timeout=5).status_code == 200
    started = time.monotonic()
    fleet.create(probe_name)
    fleet.wait_settled(timeout=90, names=[probe_name])
    return time.monotonic() - started


@dataclass
class Sampled:
    """Ready conditions seen per resource while a fault lasted: (status, reason) pairs in order, repeats dropped."""

    seen: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def statuses(self, names: Iterable[str]) -> set[str]:
        return {status for name in names for status, _ in self.seen.get(name, [])}

    def reasons(self, names: Iterable[str], status: str) -> set[str]:
        return {reason for name in names for s, reason in self.seen.get(name, []) if s == status}


@contextmanager
def sample_conditions(fleet: Fleet, interval: float = 0.5) -> Iterator[Sampled]:
    """Read every resource's Ready condition every ``interval`` seconds in the background until the block ends."""
    sampled = Sampled()
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                objects = fleet.objects()
            except Exception:  # the API server itself may be the fault; the next round reads again
                objects = {}
            for name, obj in objects.items():
                conditions = (obj.get("status") or {}).get("conditions") or []
                ready = next((c for c in conditions if c["type"] == "Ready"), None)
                if ready is None:
                    continue
                pair = (ready["status"], ready["reason"])
                history = sampled.seen.setdefault(name, [])
                if not history or history[-1] != pair:
                    history.append(pair)
            stop.wait(interval)

    thread = threading.Thread(target=run, name="sample-conditions", daemon=True)
    thread.start()
    try:
        yield sampled
    finally:
        stop.set()
        thread.join(timeout=30)


def wait_for(predicate: Any, what: str, timeout: float = 60, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"never saw {what} within {timeout:.0f}s")


def creates_sent(rig: Rig) -> int:
    return len(rig.infisical.state.requests_to(CREATE_PATH, "POST"))

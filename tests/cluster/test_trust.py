"""Against the real API server: a pass never acts on a view older than its own status write, a refusal outlives a
restart, and a Secret no resource references leaves no trace in the log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from octoconn.conditions import Event
from octoconn.kube import KubeClient, load_connection
from octoconn.runtime import Runtime
from octoconn.settings import Settings
from tests.cluster.conftest import CLIENT_ID, CLIENT_SECRET, Kube, Remotes, operator_env, own_namespace
from tests.cluster.operator_process import OperatorProcess
from tests.envtest.controlplane import ClusterAccess

pytestmark = pytest.mark.cluster


def spec(remotes: Remotes, **extra: Any) -> dict[str, Any]:
    return {"instanceUrl": remotes.octopus_url, "apiKeySecretRef": {"name": "octopus-key"}, **extra}


def requests_for(remotes: Remotes, method: str, name: str | None = None) -> list[Any]:
    return [
        r
        for r in remotes.infisical.state.requests
        if r.method == method
        and "/app-connections/octopus-deploy" in r.path
        and (name is None or (r.json or {}).get("name") == name)
    ]


class _PassCounter(logging.Handler):
    """Counts finished passes through the loop's own "next reconcile" line; ``done`` once there were ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__(logging.DEBUG)
        self.limit = limit
        self.passes = 0
        self.done = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "next reconcile in" in record.getMessage():
            self.passes += 1
            if self.passes >= self.limit:
                self.done.set()


@pytest.mark.parametrize("held", ["no status yet", "only the pending-create marker"])
async def test_a_second_pass_never_acts_on_a_body_older_than_its_own_status_write(
    control_plane: ClusterAccess, crd: str, remotes: Remotes, kube_api: client.ApiClient, held: str
) -> None:
    with own_namespace(kube_api, "stale") as namespace:
        kube = Kube(kube_api, namespace)
        kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
        name = f"held-{secrets.token_hex(3)}"
        body = kube.apply_odc(name, spec(remotes))
        if held == "only the pending-create marker":
            # What the watch delivers after the marker write and before the final status write.
            started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            body = {**body, "status": {"pendingCreate": {"name": name, "startedAt": started}}}
        # The watch event of our own status write is held back for good: the loop's body never moves on.
        held_back = dict(body)

        settings = Settings(
            infisical_url=remotes.infisical.url,
            client_id=CLIENT_ID,  # type: ignore[arg-type]
            client_secret=CLIENT_SECRET,  # type: ignore[arg-type]
            allow_http=True,
            infisical_reads_per_minute=0,
        )
        runtime = Runtime.build(
            settings, KubeClient(functools.partial(load_connection, kubeconfig=control_plane.kubeconfig))
        )
        emitted: list[Event] = []

        def post(_: Mapping[str, Any], event: Event) -> None:
            emitted.append(event)
            runtime.kick(namespace, name)  # a wake-up that arrives during the first pass, as a watch event would

        runtime.post_event = post
        counter = _PassCounter(limit=2)
        logger = logging.getLogger("octoconn.loop")
        level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(counter)
        try:
            runtime.observe(held_back)  # the only watch event the operator gets: its own writes never show
            await asyncio.wait_for(counter.done.wait(), 60)
        finally:
            logger.removeHandler(counter)
            logger.setLevel(level)
            await runtime.aclose()

        assert counter.passes == 2  # the second pass did run, on the held-back body
        reasons = [e.reason for e in emitted]
        assert "Created" in reasons
        assert "Adopted" not in reasons  # it did not "adopt" its own connection...
        assert "NameConflict" not in reasons  # ...nor see it as somebody else's
        assert len(requests_for(remotes, "POST", name)) == 1
        status = kube.odc(name)["status"]  # type: ignore[index]
        row = remotes.infisical.state.connection(status["id"])
        assert row is not None
        assert [r for r in requests_for(remotes, "PATCH") if r.path.endswith(status["id"])] == []
        assert status["credentialsHash"] == row["credentialsHash"]  # no credentials sent again
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("True", "Available")


@pytest.fixture
def restartable(
    control_plane: ClusterAccess, crd: str, remotes: Remotes, kube_api: client.ApiClient, tmp_path: Path
) -> Iterator[tuple[Kube, OperatorProcess]]:
    with own_namespace(kube_api, "refusal") as name:
        # A short periodic check: the refusal must also hold against it, not only against a restart.
        env = operator_env(remotes, OCTOCONN_RESYNC_INTERVAL_SECONDS="2", OCTOCONN_LOG_LEVEL="DEBUG")
        operator = OperatorProcess(
            kubeconfig=control_plane.kubeconfig, env=env, log_path=tmp_path / "operator.log", namespaces=[name]
        )
        try:
            yield Kube(kube_api, name), operator
        finally:
            operator.stop()


def wait_for_log(operator: OperatorProcess, text: str, after: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if operator.log_text()[after:].count(text) >= 1:
            return
        time.sleep(0.25)
    raise AssertionError(f"never logged {text!r}:\n{operator.log_tail()}")


def test_a_refused_create_is_not_sent_again_after_a_restart_or_a_periodic_check(
    restartable: tuple[Kube, OperatorProcess], remotes: Remotes
) -> None:
    kube, operator = restartable
    operator.start()
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    name = f"refused-{secrets.token_hex(3)}"
    missing_project = "6f1c7a0e-1111-4222-8333-" + secrets.token_hex(6)
    kube.apply_odc(name, spec(remotes, projectId=missing_project))
    obj = kube.wait_condition(name, "Synced", "False", "InfisicalRejected")
    assert obj["status"]["refusedWrite"]["operation"] == "create"
    synced = kube.condition(name, "Synced")
    assert synced is not None
    assert "not sent again until the resource or its Secret changes" in synced["message"]
    assert len(requests_for(remotes, "POST", name)) == 1

    # Several periodic checks (every 2 s) go by, each one logged: none sends the create again.
    after = len(operator.log_text())
    for _ in range(2):
        wait_for_log(operator, f"[{kube.namespace}/{name}] InfisicalRejected", after)
        after = len(operator.log_text())
    assert len(requests_for(remotes, "POST", name)) == 1

    operator.stop()
    after = len(operator.log_text())
    operator.start()
    wait_for_log(operator, f"[{kube.namespace}/{name}] InfisicalRejected", after)
    assert len(requests_for(remotes, "POST", name)) == 1

    # A change of the resource sends it again (the project now exists, so it succeeds).
    remotes.infisical.state.add_project(missing_project)
    kube.patch_odc(name, {"spec": {"description": "now with a project"}})
    kube.wait_condition(name, "Ready", "True", "Available")
    assert len(requests_for(remotes, "POST", name)) == 2
    assert kube.odc(name)["status"].get("refusedWrite") is None  # type: ignore[index]


@pytest.mark.usefixtures("operator")
def test_a_secret_no_resource_references_leaves_no_log_line(
    kube: Kube, remotes: Remotes, operator: OperatorProcess
) -> None:
    unreferenced = f"unreferenced-{secrets.token_hex(4)}"
    kube.put_secret(unreferenced, {"token": "x"})
    kube.put_secret(unreferenced, {"token": "y"})  # a change, too
    # A referenced Secret's change afterwards: once its effect is seen, the earlier events have been handled too
    # (one watch stream for all Secrets, delivered in order).
    kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.apply_odc("user", spec(remotes))
    kube.wait_condition("user", "Ready", "True", "Available")
    version = kube.put_secret("octopus-key", {"apiKey": remotes.new_key()})
    kube.wait_status("user", lambda s: s.get("secretResourceVersion") == version, "the rotation")

    log = operator.log_text()
    assert "wake-on-secret" in log  # the referenced Secret did go through the handler (the log is at DEBUG)...
    assert unreferenced not in log  # ...the unreferenced one left no line at all, at DEBUG or above

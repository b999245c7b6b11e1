"""The floor: a minimal asyncio client doing per resource only the calls the operator must make.

Runs in a process of its own (``python bench/floor.py ...``, started by ``operator_scale.py``) against the same
kube-apiserver and test servers as the operator, on a namespace the operator does not watch. httpx only, a fixed
number of requests in flight (20 by default, the operator's ``max_workers``). What it does:

- watches the namespace's ``OctopusDeployConnection``s and its Secrets (one list, then one watch, each);
- per key: one Octopus check (``GET /api/users/me``), shared by every resource using that key;
- per new resource: one metadata patch (finalizer and create marker), one Infisical create, one status patch;
- per resource on a Secret change: one Infisical credentials patch, one status patch.

No retries, no periodic checks, no events, no metrics: whatever the operator spends beyond this is the price of
being an operator (Kopf, safety, observability), and the benchmark prints the ratio. It stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import importlib.util
import json
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

if importlib.util.find_spec("sniffio") is None:
    # As the operator does (octoconn/httputil.py): httpcore imports sniffio for every lock it makes, and a missing
    # module is searched for along sys.path on each try. The floor must not pay for what the operator avoids.
    sys.modules["sniffio"] = None  # type: ignore[assignment]

GROUP, VERSION, PLURAL = "octoconn.dev", "v1alpha1", "octopusdeployconnections"
FINALIZER = f"{GROUP}/finalizer"
MARKER = f"{GROUP}/pending-create"
MERGE = {"Content-Type": "application/merge-patch+json"}
INFISICAL_CONNECTIONS = "/api/v1/app-connections/octopus-deploy"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Resource:
    name: str
    instance_url: str
    secret: str
    generation: int
    remote_id: str | None = None
    applied: str | None = None  # the Secret resourceVersion whose key Infisical holds (or is being sent)
    started: bool = False  # a create is under way: the watch events of its own patches must not start another


@dataclass
class Floor:
    kube: httpx.AsyncClient
    infisical: httpx.AsyncClient
    octopus: httpx.AsyncClient
    namespace: str
    credentials: tuple[str, str]
    resources: dict[str, Resource] = field(default_factory=dict)
    secrets: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (resourceVersion, key)
    checks: dict[tuple[str, str], asyncio.Task[None]] = field(default_factory=dict)
    queue: asyncio.Queue[tuple[str, str]] = field(default_factory=asyncio.Queue)
    queued: set[tuple[str, str]] = field(default_factory=set)
    token: str = ""

    @property
    def base(self) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}"

    async def login(self) -> None:
        client_id, client_secret = self.credentials
        response = await self.infisical.post(
            "/api/v1/auth/universal-auth/login", json={"clientId": client_id, "clientSecret": client_secret}
        )
        response.raise_for_status()
        self.token = response.json()["accessToken"]

    def enqueue(self, kind: str, name: str) -> None:
        if (kind, name) not in self.queued:  # per-key dedup, as a controller work queue does
            self.queued.add((kind, name))
            self.queue.put_nowait((kind, name))

    def check(self, url: str, key: str) -> asyncio.Task[None]:
        """One Octopus check per (instance, key), shared by every resource that uses it."""
        task = self.checks.get((url, key))
        if task is None:

            async def run() -> None:
                response = await self.octopus.get(f"{url}/api/users/me", headers={"X-Octopus-ApiKey": key})
                response.raise_for_status()

            task = self.checks[(url, key)] = asyncio.ensure_future(run())
        return task

    # --- watch events

    def on_resource(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        name = meta["name"]
        if kind == "DELETED":
            self.resources.pop(name, None)
            return
        if name not in self.resources:
            spec = obj["spec"]
            status = obj.get("status") or {}
            self.resources[name] = Resource(
                name,
                spec["instanceUrl"].rstrip("/"),
                spec["apiKeySecretRef"]["name"],
                meta.get("generation", 1),
                status.get("id"),
                status.get("secretResourceVersion"),
            )
        resource = self.resources[name]
        if resource.remote_id is None and not resource.started:
            self.enqueue("create", name)
        elif resource.secret in self.secrets and resource.applied != self.secrets[resource.secret][0]:
            self.enqueue("rotate", name)

    def on_secret(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.secrets.pop(name, None)
            return
        key = base64.b64decode((obj.get("data") or {}).get("apiKey", "")).decode()
        self.secrets[name] = (obj["metadata"]["resourceVersion"], key)
        for resource in self.resources.values():
            if resource.secret == name and resource.remote_id is not None and resource.applied != self.secrets[name][0]:
                self.enqueue("rotate", resource.name)

    # --- work

    async def create(self, resource: Resource) -> None:
        if resource.started:
            return
        resource.started = True
        version, key = self.secrets[resource.secret]
        resource.applied = version
        await self.check(resource.instance_url, key)
        marker = json.dumps({"name": resource.name, "startedAt": now()}, separators=(",", ":"))
        patch = {"metadata": {"finalizers": [FINALIZER], "annotations": {MARKER: marker}}}
        (await self.kube.patch(f"{self.base}/{resource.name}", json=patch, headers=MERGE)).raise_for_status()
        credentials = {"instanceUrl": resource.instance_url, "apiKey": key}
        body = {"name": resource.name, "method": "api-key", "credentials": credentials}
        response = await self.infisical.post(
            INFISICAL_CONNECTIONS, json=body, headers={"Authorization": f"Bearer {self.token}"}
        )
        response.raise_for_status()
        remote = response.json()["appConnection"]
        resource.remote_id = remote["id"]
        await self.write_status(resource, remote, version, annotation_cleared=True)

    async def rotate(self, resource: Resource) -> None:
        version, key = self.secrets[resource.secret]
        if resource.applied == version:
            return
        resource.applied = version
        await self.check(resource.instance_url, key)
        body = {"credentials": {"instanceUrl": resource.instance_url, "apiKey": key}}
        path = f"{INFISICAL_CONNECTIONS}/{resource.remote_id}"
        response = await self.infisical.patch(path, json=body, headers={"Authorization": f"Bearer {self.token}"})
        response.raise_for_status()
        await self.write_status(resource, response.json()["appConnection"], version)

    async def write_status(
        self, resource: Resource, remote: dict[str, Any], version: str, annotation_cleared: bool = False
    ) -> None:
        stamp = now()
        conditions = [
            {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": "ok",
                "lastTransitionTime": stamp,
                "observedGeneration": resource.generation,
            }
            for kind, reason in (("Ready", "Available"), ("CredentialsVerified", "ApiKeyValid"), ("Synced", "UpToDate"))
        ]
        status = {
            "id": remote["id"],
            "version": remote.get("version"),
            "credentialsHash": remote.get("credentialsHash"),
            "secretResourceVersion": version,
            "lastVerifiedTime": stamp,
            "observedGeneration": resource.generation,
            "conditions": conditions,
        }
        path = f"{self.base}/{resource.name}/status"
        (await self.kube.patch(path, json={"status": status}, headers=MERGE)).raise_for_status()

    async def worker(self) -> None:
        while True:
            kind, name = await self.queue.get()
            self.queued.discard((kind, name))
            resource = self.resources.get(name)
            if resource is None or resource.secret not in self.secrets:
                continue
            try:
                await (self.create(resource) if kind == "create" else self.rotate(resource))
            except httpx.HTTPError as exc:  # the floor has no retries: say so and move on
                print(f"floor: {kind} {name} failed: {exc!r}", file=sys.stderr, flush=True)


async def watch(
    kube: httpx.AsyncClient, path: str, on_event: Callable[[str, dict[str, Any]], None], stop: asyncio.Event
) -> None:
    """List, then watch from the list's resourceVersion. A watch that times out is resumed from the last version;
    one that answers an ERROR event (410 Gone once etcd compacted that version) starts again from a fresh list."""
    while not stop.is_set():
        listing = (await kube.get(path)).raise_for_status().json()
        for item in listing["items"]:
            on_event("ADDED", item)
        version: str | None = listing["metadata"]["resourceVersion"]
        while version is not None and not stop.is_set():
            version = await _follow(kube, path, version, on_event)


async def _follow(
    kube: httpx.AsyncClient, path: str, version: str, on_event: Callable[[str, dict[str, Any]], None]
) -> str | None:
    """One watch request; the version to resume from, or None when the list must be read again."""
    params = {"watch": "true", "resourceVersion": version, "timeoutSeconds": "300"}
    async with kube.stream("GET", path, params=params, timeout=httpx.Timeout(10, read=330)) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line:
                continue
            event = json.loads(line)
            if event["type"] == "ERROR":
                return None
            version = event["object"]["metadata"].get("resourceVersion", version)
            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                on_event(event["type"], event["object"])
    return version


async def run(args: argparse.Namespace) -> None:
    context = ssl.create_default_context(cafile=args.ca)
    context.load_cert_chain(args.cert, args.key)
    limits = httpx.Limits(max_connections=args.in_flight + 4, max_keepalive_connections=args.in_flight + 4)
    async with (
        httpx.AsyncClient(base_url=args.server, verify=context, limits=limits, timeout=30) as kube,
        httpx.AsyncClient(base_url=args.infisical_url, limits=limits, timeout=30) as infisical,
        httpx.AsyncClient(limits=limits, timeout=30) as octopus,
    ):
        floor = Floor(kube, infisical, octopus, args.namespace, (args.client_id, args.client_secret))
        await floor.login()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        tasks: list[asyncio.Future[Any]] = [await watch_secrets_first(floor, stop)]
        tasks += [asyncio.ensure_future(floor.worker()) for _ in range(args.in_flight)]
        tasks.append(asyncio.ensure_future(watch(kube, floor.base, floor.on_resource, stop)))
        print("floor: watching", flush=True)
        started = time.monotonic()
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        print(f"floor: stopped after {time.monotonic() - started:.0f} s", flush=True)


async def watch_secrets_first(floor: Floor, stop: asyncio.Event) -> asyncio.Future[None]:
    """Secrets are listed before the resources, so a new resource finds its key in memory."""
    path = f"/api/v1/namespaces/{floor.namespace}/secrets"
    listing = (await floor.kube.get(path)).raise_for_status().json()
    for item in listing["items"]:
        floor.on_secret("ADDED", item)
    return asyncio.ensure_future(watch(floor.kube, path, floor.on_secret, stop))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="kube-apiserver URL")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--infisical-url", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--in-flight", type=int, default=20)
    args = parser.parse_args()
    args.client_secret = os.environ["FLOOR_CLIENT_SECRET"]  # not on the command line, where ps shows it
    profile = os.environ.get("FLOOR_PROFILE")
    if not profile:
        asyncio.run(run(args))
        return 0
    profiler = cProfile.Profile()
    try:
        profiler.runcall(asyncio.run, run(args))
    finally:
        profiler.dump_stats(profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How the real operator copes with many resources: time to Ready, rotation latency, memory.

Starts the local control plane, both test servers and the operator process (as the cluster tier does), creates N
OctopusDeployConnections that share one Secret, then rotates that Secret once. Prints figures; asserts nothing
about timing (shared machines make timed assertions flaky).

    uv run python bench/operator_scale.py --resources 100 --writes-per-minute 6000

With the default pace (120 writes per minute, as for Infisical Cloud), creating N connections takes at least
N/2 seconds after the first burst: that is the pacer doing its job, not slowness.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client  # noqa: E402

from octoconn.models import GROUP, PLURAL, VERSION  # noqa: E402
from tests.cluster.operator_process import OperatorProcess  # noqa: E402
from tests.envtest.controlplane import ControlPlane  # noqa: E402
from tests.servers.infisical import InfisicalServer  # noqa: E402
from tests.servers.octopus import OctopusServer  # noqa: E402

NAMESPACE = "bench"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def put_secret(core: client.CoreV1Api, key: str) -> str:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name="octopus-key"), data={"apiKey": base64.b64encode(key.encode()).decode()}
    )
    try:
        return str(core.replace_namespaced_secret("octopus-key", NAMESPACE, body).metadata.resource_version)
    except client.exceptions.ApiException:
        return str(core.create_namespaced_secret(NAMESPACE, body).metadata.resource_version)


def statuses(custom: client.CustomObjectsApi) -> list[dict[str, Any]]:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"]
    return [item.get("status") or {} for item in items]


def ready_count(items: list[dict[str, Any]]) -> int:
    return sum(1 for s in items for c in s.get("conditions") or [] if c["type"] == "Ready" and c["status"] == "True")


def wait(label: str, predicate: Any, timeout: float) -> float:
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        done, total = predicate()
        if f"{done}/{total}" != last:
            last = f"{done}/{total}"
            print(f"  {label}: {last} after {time.monotonic() - started:5.1f}s", flush=True)
        if done >= total:
            return time.monotonic() - started
        time.sleep(0.5)
    raise SystemExit(f"{label}: timed out after {timeout:.0f}s at {last}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=100)
    parser.add_argument("--writes-per-minute", type=int, default=6000)
    parser.add_argument("--reads-per-minute", type=int, default=0, help="0 = unpaced (the operator default is 50)")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    n = args.resources

    with tempfile.TemporaryDirectory(prefix="octoconn-bench-") as tmp, ControlPlane() as cluster:
        octopus = OctopusServer().start()
        infisical = InfisicalServer(allow_internal_ips=True).start()
        infisical.state.add_universal_identity(client_id="bench", client_secret="bench-secret-0123456789abcdef")
        api = cluster.kubernetes_api_client()
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        crd_file = ROOT / "crds" / "octoconn.dev_octopusdeployconnections.yaml"
        cluster.kubectl("apply", "--server-side", "-f", str(crd_file))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}")
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        put_secret(core, octopus.state.issue_key())
        env = {
            "OCTOCONN_INFISICAL_URL": infisical.url,
            "OCTOCONN_CLIENT_ID": "bench",
            "OCTOCONN_CLIENT_SECRET": "bench-secret-0123456789abcdef",
            "OCTOCONN_ALLOW_HTTP": "true",
            "OCTOCONN_INFISICAL_WRITES_PER_MINUTE": str(args.writes_per_minute),
            "OCTOCONN_INFISICAL_READS_PER_MINUTE": str(args.reads_per_minute),
        }
        operator = OperatorProcess(kubeconfig=cluster.kubeconfig, env=env, log_path=Path(tmp) / "operator.log")
        operator.start()
        assert operator.popen is not None
        pid = operator.popen.pid
        idle_rss = rss_mib(pid)
        try:
            print(f"creating {n} OctopusDeployConnections sharing one Secret", flush=True)
            created = time.monotonic()
            for i in range(n):
                body = {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "OctopusDeployConnection",
                    "metadata": {"name": f"conn-{i:04d}"},
                    "spec": {"instanceUrl": octopus.url, "apiKeySecretRef": {"name": "octopus-key"}},
                }
                custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
            submit = time.monotonic() - created
            to_ready = wait("Ready", lambda: (ready_count(statuses(custom)), n), args.timeout)
            ready_rss = rss_mib(pid)

            print("rotating the shared Secret", flush=True)
            version = put_secret(core, octopus.state.issue_key())
            to_rotated = wait(
                "rotated",
                lambda: (sum(1 for s in statuses(custom) if s.get("secretResourceVersion") == version), n),
                args.timeout,
            )
            hashes = {s.get("credentialsHash") for s in statuses(custom)}
            posts = [r for r in infisical.state.requests if r.method == "POST" and r.path.endswith("octopus-deploy")]
            per_connection = [
                len([r for r in infisical.state.requests if r.method == "PATCH" and r.path.endswith(s["id"])])
                for s in statuses(custom)
            ]
        finally:
            operator.stop()
            infisical.stop()
            octopus.stop()
            api.close()

    print()
    print(f"resources                      {n}")
    print(f"infisical writes/minute (pace) {args.writes_per_minute}")
    print(f"infisical reads/minute (pace)  {args.reads_per_minute or 'unpaced'}")
    print(f"submit {n} objects              {submit:7.1f} s")
    print(f"all Ready after                {to_ready:7.1f} s  ({n / to_ready:.1f} resources/s)")
    print(f"rotation reached all after     {to_rotated:7.1f} s")
    print(f"creates in Infisical           {len(posts)} (one per resource expected)")
    print(f"PATCHes per connection         median {statistics.median(per_connection):.0f}, max {max(per_connection)}")
    print(f"distinct credentialsHash       {len(hashes)}")
    print(f"operator RSS idle / loaded     {idle_rss:.0f} MiB / {ready_rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

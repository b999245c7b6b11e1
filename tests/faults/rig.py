"""What a fault test breaks (the proxies, the servers, the control plane) and what it checks against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.envtest.controlplane import ControlPlane
from tests.faults.toxiproxy import Proxy, Toxiproxy
from tests.servers.infisical import InfisicalServer
from tests.servers.octopus import OctopusServer


@dataclass
class Rig:
    """Everything a fault test breaks, and what it checks against."""

    plane: ControlPlane
    toxiproxy: Toxiproxy
    kube_proxy: Proxy
    infisical_proxy: Proxy
    octopus_a: Proxy
    octopus_b: Proxy
    octopus: OctopusServer
    infisical: InfisicalServer
    operator_kubeconfig: str
    issued_secrets: list[str] = field(default_factory=list)

    def new_key(self) -> str:
        key = self.octopus.state.issue_key()
        self.issued_secrets.append(key)
        return key

    def connections_named(self, name: str) -> list[dict[str, Any]]:
        return [c for c in self.infisical.state.connections() if c["name"] == name]

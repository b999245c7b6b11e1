"""Nothing unverified is trusted: what Infisical answered is compared with what was asked, names held by other apps
and servers without Octopus Deploy connections get conditions that say so, and a definitive refusal is not sent
again until something changes. The reconciler runs with the real clients against the test servers.
"""

from __future__ import annotations

import base64
from typing import Any

from octoconn import errors
from octoconn.apikeys import SecretData
from octoconn.infisical import InfisicalClient
from octoconn.kube import decode_secret_data
from octoconn.models import OctopusDeployConnectionStatus
from octoconn.octopus import OctopusClient
from octoconn.reconcile import Outcome, Resource
from tests.contract.test_reconciler import MemorySecrets, MemoryStatus, creates, make_reconciler
from tests.servers.infisical import InfisicalServer
from tests.servers.octopus import OctopusServer


def body(
    octopus: OctopusServer,
    status: OctopusDeployConnectionStatus | None = None,
    *,
    generation: int = 1,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> Resource:
    return Resource.from_body(
        {
            "metadata": {
                "name": "prod",
                "namespace": "team",
                "uid": "uid-1",
                "generation": generation,
                "annotations": annotations or {},
            },
            "spec": {"instanceUrl": octopus.url, "apiKeySecretRef": {"name": "key"}, **spec},
            "status": (status or OctopusDeployConnectionStatus()).to_patch(),
        }
    )


def synced(outcome: Outcome) -> tuple[str, str, str]:
    condition = outcome.status.condition("Synced")
    assert condition is not None
    return condition.status, condition.reason, condition.message


def ready(outcome: Outcome) -> tuple[str, str]:
    condition = outcome.status.condition("Ready")
    assert condition is not None
    return condition.status, condition.reason


def writes(infisical: InfisicalServer) -> list[Any]:
    return [r for r in infisical.state.requests if r.method in ("POST", "PATCH") and "app-connections" in r.path]


async def test_older_release_that_drops_project_id_is_not_ready(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    project = infisical.state.add_project()
    infisical.state.older_release = True
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    reconciler = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())

    first = await reconciler.reconcile(body(octopus, projectId=project))
    state, reason, message = synced(first)
    assert (state, reason) == ("False", "InfisicalIgnoredRequest")
    assert f"ignored projectId {project}" in message
    assert "does not support project-level app connections" in message
    assert "Upgrade Infisical" in message
    assert ready(first) == ("False", "InfisicalIgnoredRequest")
    assert first.status.id is not None  # the connection Infisical did make is recorded, so it is never duplicated
    assert first.status.project_id is None
    assert first.error is not None
    assert first.error.retry is errors.Retry.WAIT_FOR_CHANGE

    # The periodic check reads it back: still not what was asked, and nothing is written again.
    second = await reconciler.reconcile(body(octopus, first.status, projectId=project))
    assert synced(second)[:2] == ("False", "InfisicalIgnoredRequest")
    assert len(creates(infisical)) == 1
    assert len(writes(infisical)) == 1


async def test_older_release_with_an_unknown_project_is_not_ready_either(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    infisical.state.older_release = True  # it does not look at projectId at all
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    outcome = await make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus()).reconcile(
        body(octopus, projectId="no-such-project")
    )
    assert ready(outcome) == ("False", "InfisicalIgnoredRequest")
    assert "ignored projectId no-such-project" in synced(outcome)[2]


async def test_description_is_compared_as_infisical_stores_it(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    reconciler = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())
    first = await reconciler.reconcile(body(octopus, description="  Production Octopus \n"))
    assert first.error is None, first.error
    assert infisical.state.connections()[0]["description"] == "Production Octopus"
    second = await reconciler.reconcile(body(octopus, first.status, description="  Production Octopus \n"))
    assert second.error is None
    assert synced(second)[:2] == ("True", "UpToDate")
    assert len(writes(infisical)) == 1  # the create only: nothing re-sent at the periodic check

    blank = await reconciler.reconcile(body(octopus, second.status, generation=2, description="   "))
    assert blank.error is None
    assert len(writes(infisical)) == 2  # cleared once...
    await reconciler.reconcile(body(octopus, blank.status, generation=2, description="   "))
    assert len(writes(infisical)) == 2  # ...and "" is the same as no description from then on


async def test_name_held_by_another_apps_connection_is_a_name_conflict(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    infisical.state.add_foreign_connection(app="windmill", name="prod")
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    reconciler = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())
    # Even with the adopt annotation: another app's connection cannot be adopted.
    outcome = await reconciler.reconcile(body(octopus, annotations={"octoconn.dev/adopt-existing": "true"}))
    state, reason, message = synced(outcome)
    assert (state, reason) == ("False", "NameConflict")
    assert "another app" in message
    assert "cannot be adopted" in message
    assert "Choose another spec.connectionName" in message
    assert "annotate" not in message
    # A create is sent without a lookup first (creates are paced writes only), and Infisical refuses the name.
    assert [r.status for r in creates(infisical)] == [400]
    assert [c["name"] for c in infisical.state.connections()] == ["prod"]  # the other app's, alone


async def test_rename_onto_a_taken_name_gives_advice_that_works_and_is_not_resent(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    reconciler = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())
    created = await reconciler.reconcile(body(octopus))
    infisical.state.add_foreign_connection(app="windmill", name="taken")

    renamed = await reconciler.reconcile(body(octopus, created.status, generation=2, connectionName="taken"))
    state, reason, message = synced(renamed)
    assert (state, reason) == ("False", "NameConflict")
    assert f'Cannot rename Infisical connection {created.status.id} from "prod" to "taken"' in message
    assert "rename or delete that connection in Infisical" in message
    assert "adopt" not in message
    assert "not sent again until the resource or its Secret changes" in message
    assert renamed.status.refused_write is not None
    refused_patches = len(writes(infisical))

    # A periodic check, and an operator restart (a new reconciler reading the status back): not sent again.
    await reconciler.reconcile(body(octopus, renamed.status, generation=2, connectionName="taken"))
    restarted = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())
    after_restart = await restarted.reconcile(body(octopus, renamed.status, generation=2, connectionName="taken"))
    assert synced(after_restart)[1] == "NameConflict"
    assert "Cannot rename" in synced(after_restart)[2]
    assert len(writes(infisical)) == refused_patches

    # The user asks for a retry (say, after deleting the other connection): it is sent again, and succeeds.
    infisical.state.delete_connection_out_of_band(
        next(c["id"] for c in infisical.state.connections() if c["name"] == "taken")
    )
    asked = await restarted.reconcile(
        body(
            octopus,
            after_restart.status,
            generation=2,
            connectionName="taken",
            annotations={"octoconn.dev/reconcile-requested-at": "now"},
        )
    )
    assert asked.error is None, asked.error
    assert asked.status.connection_name == "taken"
    assert asked.status.refused_write is None


async def test_refused_create_waits_for_a_change(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    reconciler = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())
    missing_project = "6f1c7a0e-1111-4222-8333-944445555666"
    first = await reconciler.reconcile(body(octopus, projectId=missing_project))
    assert synced(first)[:2] == ("False", "InfisicalRejected")
    assert first.status.refused_write is not None
    assert (first.status.refused_write.operation, first.status.refused_write.generation) == ("create", 1)

    restarted = make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus())
    second = await restarted.reconcile(body(octopus, first.status, projectId=missing_project))
    assert synced(second)[:2] == ("False", "InfisicalRejected")
    assert "Could not find project" in synced(second)[2]
    assert len(creates(infisical)) == 1

    # A new Secret version is a change: the create is sent again (and refused again).
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    third = await restarted.reconcile(body(octopus, second.status, projectId=missing_project))
    assert synced(third)[1] == "InfisicalRejected"
    assert len(creates(infisical)) == 2

    infisical.state.add_project(missing_project)
    fourth = await restarted.reconcile(body(octopus, third.status, generation=2, projectId=missing_project))
    assert fourth.error is None, fourth.error
    assert fourth.status.project_id == missing_project
    assert fourth.status.refused_write is None


async def test_infisical_without_octopus_connections_says_so(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    infisical.state.octopus_app_available = False
    secrets = MemorySecrets()
    secrets.put("key", {"apiKey": octopus.state.issue_key()})
    outcome = await make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus()).reconcile(body(octopus))
    state, reason, message = synced(outcome)
    assert (state, reason) == ("False", "InfisicalUnsupported")
    assert "has no Octopus Deploy app connections" in message
    assert "December 2025" in message
    assert "not found" not in message.split("(it answered")[0]  # the connection itself is not called "not found"


async def test_utf16_key_is_reported_as_utf16_not_missing(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    key = octopus.state.issue_key()
    encoded = {"apiKey": base64.b64encode(key.encode("utf-16")).decode(), "note": base64.b64encode(b"ok").decode()}
    text, undecodable = decode_secret_data(encoded)
    assert undecodable == {"apiKey": "UTF-16"}
    secrets = MemorySecrets()
    secrets.secrets[("team", "key")] = SecretData(resource_version="7", data=text, undecodable=undecodable)
    outcome = await make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus()).reconcile(body(octopus))
    assert outcome.error is not None
    assert outcome.error.reason == "MalformedApiKey"
    message = outcome.error.message
    assert 'has the key "apiKey", but its value is not UTF-8 text (it looks like UTF-16)' in message
    assert "iconv -f UTF-16 -t UTF-8" in message
    assert "keys present" not in message
    assert key not in message
    assert infisical.state.requests == []


def test_undecodable_values_are_named_in_the_missing_key_message() -> None:
    text, undecodable = decode_secret_data(
        {"other": base64.b64encode(b"\x00\xff\xfe\x80").decode(), "plain": base64.b64encode(b"x").decode()}
    )
    assert text == {"plain": "x"}
    assert undecodable == {"other": "binary data or text in another encoding"}
    # UTF-16 without a byte-order mark is valid UTF-8 (full of NULs), and still recognised as UTF-16.
    no_bom = decode_secret_data({"k": base64.b64encode("API-ABC".encode("utf-16-le")).decode()})
    assert no_bom == ({}, {"k": "UTF-16"})


async def test_utf8_byte_order_mark_is_trimmed_like_infisical_does(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    key = octopus.state.issue_key()
    text, _ = decode_secret_data({"apiKey": base64.b64encode(key.encode("utf-8-sig") + b"\r\n").decode()})
    assert text["apiKey"].startswith("\ufeff")
    secrets = MemorySecrets()
    secrets.put("key", text)
    outcome = await make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus()).reconcile(body(octopus))
    assert outcome.error is None, outcome.error
    stored = infisical.state.connections()[0]["_credentials"]["apiKey"]
    assert stored == key


async def test_missing_key_lists_every_key_present(
    octopus: OctopusServer, infisical: InfisicalServer, octopus_client: OctopusClient, infisical_client: InfisicalClient
) -> None:
    secrets = MemorySecrets()
    secrets.secrets[("team", "key")] = SecretData(
        resource_version="7", data={"token": "x"}, undecodable={"blob": "binary data or text in another encoding"}
    )
    outcome = await make_reconciler(secrets, octopus_client, infisical_client, MemoryStatus()).reconcile(body(octopus))
    assert outcome.error is not None
    assert outcome.error.reason == "SecretKeyMissing"
    assert "(keys present: blob, token)" in outcome.error.message

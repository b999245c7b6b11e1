"""Instance URL normalisation: what users paste (portal pages, API roots, trailing slashes) becomes the bare base."""

from __future__ import annotations

import pytest

from octoconn import errors
from octoconn.remote import normalize_instance_url

NORMALISED = [
    ("https://example.octopus.app", "https://example.octopus.app"),
    ("https://example.octopus.app/", "https://example.octopus.app"),
    ("https://example.octopus.app//", "https://example.octopus.app"),
    ("https://example.octopus.app/api", "https://example.octopus.app"),
    ("https://example.octopus.app/api/", "https://example.octopus.app"),
    ("https://example.octopus.app/API", "https://example.octopus.app"),
    ("https://example.octopus.app/api/users/me", "https://example.octopus.app"),
    ("https://example.octopus.app/app#/Spaces-1/projects", "https://example.octopus.app"),
    ("https://example.octopus.app/app#/Spaces-1/projects/hello-world/deployments", "https://example.octopus.app"),
    ("https://example.octopus.app/app", "https://example.octopus.app"),
    ("https://example.octopus.app/#/Spaces-1", "https://example.octopus.app"),
    ("https://example.octopus.app/?skip=0", "https://example.octopus.app"),
    ("https://host/octopus/", "https://host/octopus"),
    ("https://host/octopus", "https://host/octopus"),
    ("https://host/octopus/api/", "https://host/octopus"),
    ("https://host/octopus/app#/Spaces-1/projects", "https://host/octopus"),
    ("https://host/Tools/Octopus/", "https://host/Tools/Octopus"),  # path case is the server's business
    ("  https://example.octopus.app/  \n", "https://example.octopus.app"),
    ("\thttps://example.octopus.app", "https://example.octopus.app"),
    ("HTTPS://Example.Octopus.APP/", "https://example.octopus.app"),
    ("https://OCTOPUS.example.com:8443/Prefix", "https://octopus.example.com:8443/Prefix"),
    ("http://octopus.internal", "http://octopus.internal"),  # http is normalised; refusing it is verify()'s job
    ("http://10.0.0.5:8080/", "http://10.0.0.5:8080"),
    ("https://[::1]:8443/api", "https://[::1]:8443"),
    ("https://example.octopus.app/api?apikey=API-SHOULDNOTSURVIVE", "https://example.octopus.app"),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALISED)
def test_normalises(raw: str, expected: str) -> None:
    assert normalize_instance_url(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), NORMALISED)
def test_idempotent(raw: str, expected: str) -> None:
    assert normalize_instance_url(normalize_instance_url(raw)) == expected


REJECTED = [
    ("", "empty"),
    ("   ", "empty"),
    ("not a url", "no scheme"),
    ("example.octopus.app", "no scheme"),
    ("ftp://example.octopus.app", "'ftp'"),
    ("file:///etc/passwd", "'file'"),
    ("https://", "no host"),
    ("https:///octopus", "no host"),
    ("https://admin:hunter2@example.octopus.app", "user name or password"),
    ("https://API-ABCDEFGHIJKLMNOPQRSTUVWXYZ@example.octopus.app", "user name or password"),
    ("https://example.octopus.app:notaport", "not a valid URL"),
    ("https://exa mple.octopus.app", "not allowed"),
    ("https://example.octopus.app/" + "x" * 300, "255"),
]


@pytest.mark.parametrize(("raw", "fragment"), REJECTED)
def test_rejects_with_a_message_saying_what_to_fix(raw: str, fragment: str) -> None:
    with pytest.raises(errors.InvalidInstanceUrl) as caught:
        normalize_instance_url(raw)
    message = str(caught.value)
    assert fragment in message
    assert caught.value.reason == "InvalidInstanceUrl"
    assert caught.value.retry is errors.Retry.WAIT_FOR_CHANGE


@pytest.mark.parametrize(
    "raw",
    [
        "https://admin:hunter2@example.octopus.app",
        "example.octopus.app/api?apikey=API-ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "ftp://example.octopus.app/?apikey=API-ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    ],
)
def test_rejection_never_echoes_the_input(raw: str) -> None:
    # A pasted URL can carry a password or a key: the message describes the problem without repeating the URL.
    with pytest.raises(errors.InvalidInstanceUrl) as caught:
        normalize_instance_url(raw)
    assert "hunter2" not in str(caught.value)
    assert "API-ABCDEFGHIJKLMNOPQRSTUVWXYZ" not in str(caught.value)

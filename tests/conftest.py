"""Fixtures shared by every test tier; each tier's fixtures live beside the code they start."""

pytest_plugins = [
    "tests.envtest.fixtures",
    "tests.servers.octopus_fixtures",
    "tests.servers.infisical_fixtures",
]

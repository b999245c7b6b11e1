"""octoconn: registers Octopus Deploy API keys kept in Kubernetes Secrets as Infisical App Connections."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("octoconn")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without an install
    __version__ = "0.0.0+unknown"

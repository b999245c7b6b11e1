"""Command line: ``octoconn run | check | version``."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from octoconn import __version__, errors
from octoconn.octopus import OctopusClient
from octoconn.text import js_trim

if TYPE_CHECKING:
    from octoconn.remote import OctopusDestination
    from octoconn.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="octoconn", description="Octopus Deploy -> Infisical App Connection operator")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable; glob patterns ok)"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    run.add_argument("--liveness", metavar="URL", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument(
        "--standalone",
        action="store_true",
        help="no peering with other replicas (run exactly one replica); without it, peering is mandatory",
    )
    run.add_argument("--verbose", action="store_true", help="debug logging")

    check = sub.add_parser(
        "check",
        help="verify an Octopus API key once and print who it belongs to; with --space and --project, also check a "
        "secret sync's destination as the operator does",
    )
    check.add_argument("--instance-url", required=True, help="Octopus base URL, e.g. https://example.octopus.app")
    check.add_argument("--api-key-file", required=True, type=Path, help="file holding the API key ('-' for stdin)")
    check.add_argument("--allow-http", action="store_true", help="allow an http:// URL (the key travels in clear)")
    check.add_argument("--ca-bundle", type=Path, help="PEM file of CAs to trust for the Octopus server")
    _destination_arguments(check)

    sub.add_parser("version", help="print the version")

    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"octoconn {__version__}")
        return 0
    if args.command == "check":
        problem = _destination_usage(args)
        if problem:
            parser.error(f"check: {problem}")
        return asyncio.run(_check(args))
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    # Kopf imports the official Kubernetes client's models whenever the package is installed (to recognise its
    # objects, which the operator never hands it): about 10 MiB and seconds of start-up for nothing. Hide it; the
    # one login path that needs it (exec-plugin kubeconfigs, octoconn.kube.load_connection) imports it then.
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    import kopf  # imported here so `octoconn check`/`version` start fast

    from octoconn import handlers  # noqa: F401 - registers the handlers with Kopf
    from octoconn.logs import tame_noisy_loggers
    from octoconn.settings import SettingsError, load_settings

    try:
        settings = load_settings()
        if settings.auth_method == "universal":
            settings.universal_credentials()
        if settings.octopus_ca_bundle is not None:
            _load_ca_bundle(settings.octopus_ca_bundle, "OCTOCONN_OCTOPUS_CA_BUNDLE")
    except SettingsError as exc:
        print(f"octoconn: invalid settings: {exc}", file=sys.stderr)
        return 2
    kopf.configure(
        verbose=args.verbose or settings.log_level == "DEBUG",
        quiet=settings.log_level in ("WARNING", "ERROR"),
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL,
        # Plain lines say which resource they are about ("[namespace/name] ..."); JSON has an "object" field.
        log_prefix=settings.log_format == "plain",
    )
    tame_noisy_loggers(debug=args.verbose or settings.log_level == "DEBUG")
    # Flags win over OCTOCONN_NAMESPACES; --all-namespaces also overrides a namespace list set in the environment.
    namespaces = [] if args.all_namespaces else (args.namespace or settings.namespaces)
    # A peering name makes peering mandatory in Kopf: without its CRD or object the operator waits instead of
    # silently running unpeered next to another replica.
    asyncio.run(
        kopf.operator(
            standalone=args.standalone,
            peering_name=None if args.standalone else settings.peering_name,
            priority=None if args.standalone else peering_priority(settings),
            liveness_endpoint=args.liveness,
            clusterwide=not namespaces,
            namespaces=namespaces,
        )
    )
    return 0


def peering_priority(settings: Settings) -> int:
    """The configured priority, or a random one: replicas of one Deployment share their settings, and Kopf pauses
    every replica when two share the highest priority, so each draws its own (a tie is a 1 in 2**31 chance)."""
    if settings.peering_priority is not None:
        return settings.peering_priority
    return secrets.randbelow(2**31 - 1) + 1


async def _check(args: argparse.Namespace) -> int:
    from octoconn.settings import SettingsError

    try:
        raw = _read_key(args.api_key_file)
        if args.ca_bundle is not None:
            _load_ca_bundle(args.ca_bundle, "--ca-bundle")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        print(f"cannot read {args.api_key_file}: {reason}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    client = OctopusClient(allow_http=args.allow_http, ca_bundle=str(args.ca_bundle) if args.ca_bundle else None)
    key = js_trim(raw)  # as the operator reads a key from its Secret: Infisical's trim, a byte-order mark too
    try:
        identity = await client.verify(args.instance_url, key)
        kind = "service account" if identity.is_service else "user"
        print(f"OK: the key belongs to {kind} {identity.username} ({identity.user_id})")
        if identity.server_version:
            print(f"Octopus Server {identity.server_version}")
        if identity.key_expires_at:
            print(f"Key expires at {identity.key_expires_at.isoformat()}")
        if args.project is not None:
            _report_destination(
                args,
                await client.inspect_destination(args.instance_url, key, space=args.space, project=args.project),
            )
    except errors.OctoconnError as exc:
        print(f"FAILED ({exc.reason}): {exc.message}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()
    return 0


# spec.destination.scope field -> the repeatable option that sets it (one name or id each)
_SCOPE_OPTIONS = {
    "environments": "--environment",
    "roles": "--role",
    "machines": "--machine",
    "channels": "--channel",
    "processes": "--process",
    "actions": "--action",
}


def _destination_arguments(check: argparse.ArgumentParser) -> None:
    group = check.add_argument_group(
        "secret sync destination",
        "Check an OctopusDeploySecretSync's spec.destination with this key, with the same reads and the same "
        "permission verdict as the operator (nothing is written).",
    )
    group.add_argument("--project", help="spec.destination.project: a project id (Projects-1), name or slug")
    group.add_argument("--space", help="spec.destination.space: a space id (Spaces-1) or name, e.g. Default")
    for field, option in _SCOPE_OPTIONS.items():
        group.add_argument(
            option,
            dest=f"scope_{field}",
            action="append",
            metavar="NAME",
            help=f"spec.destination.scope.{field} entry, by name or id (repeatable)",
        )
    group.add_argument(
        "--secret-key",
        action="append",
        default=[],
        metavar="KEY",
        help="an Infisical secret key the sync will write (repeatable): warns when a non-sensitive Octopus variable "
        "has its name",
    )
    group.add_argument("--key-schema", help="spec.options.keySchema, e.g. WEB_{{secretKey}}")
    group.add_argument("--source-environment", default="", help="spec.source.environment, for {{environment}}")


def _destination_usage(args: argparse.Namespace) -> str | None:
    """What is wrong with the destination options, or None."""
    if (args.space is None) != (args.project is None):
        return "--space and --project go together: they name the destination"
    if args.project is None and (_scope_of(args) or args.secret_key or args.key_schema):
        return "the scope options, --secret-key and --key-schema need --space and --project"
    if args.key_schema and "{{environment}}" in args.key_schema and not args.source_environment:
        return "--key-schema uses {{environment}}: give the Infisical environment slug with --source-environment"
    return None


def _scope_of(args: argparse.Namespace) -> dict[str, list[str] | None]:
    return {field: getattr(args, f"scope_{field}") for field in _SCOPE_OPTIONS if getattr(args, f"scope_{field}")}


def _report_destination(args: argparse.Namespace, found: OctopusDestination) -> None:
    """The operator's verdict on a sync's destination: scope names resolved, permissions, clashing variables.

    Raises the ``OctoconnError`` the operator would put in DestinationVerified.
    """
    from octoconn.destination import clash_message, clashing_names, variable_names
    from octoconn.sync import missing_permissions, resolve_scope

    scope = resolve_scope(_scope_of(args), found.scope_values)
    where = f"project {found.project.name} ({found.project.id}) in space {found.space.name} ({found.space.id})"
    missing = missing_permissions(found, scope.environments or [])
    if missing:
        raise errors.OctopusPermissionMissing(
            f"Octopus user {found.user.name} lacks {' and '.join(missing)} on {where}: Infisical could not read and "
            f"rewrite its variables. Grant {', '.join(missing)} to a team of that user for this project"
        )
    print(f"OK: {where} exists and user {found.user.name} may view and edit its variables")
    names = {value.id: value.name for values in found.scope_values.values() for value in values}
    for field, ids in scope.model_dump(exclude_none=True).items():
        print(f"Scope {field}: {', '.join(f'{names.get(i, i)} ({i})' for i in ids)}")
    written = variable_names(args.secret_key, key_schema=args.key_schema, environment=args.source_environment)
    clashes = clashing_names(found.variables, written)
    if clashes:
        print(f"WARNING: {clash_message(clashes, where=f'Octopus {where}')}")


# An Octopus key is a few dozen characters; anything much longer is the wrong file (or /dev/urandom).
_MAX_KEY_FILE_BYTES = 4096


def _read_key(path: Path) -> str:
    if str(path) == "-":
        return sys.stdin.read(_MAX_KEY_FILE_BYTES + 1)[: _MAX_KEY_FILE_BYTES + 1]
    with path.open("rb") as handle:
        return handle.read(_MAX_KEY_FILE_BYTES + 1).decode("utf-8")


def _load_ca_bundle(path: Path, name: str) -> None:
    """Fail at start with the setting's name, rather than on the first reconcile with a traceback."""
    from octoconn.octopus import ssl_context
    from octoconn.settings import SettingsError

    try:
        ssl_context(path)
    except ssl.SSLError:  # before OSError, of which it is a subclass
        raise SettingsError(f"{name}={path} holds no PEM certificate") from None
    except OSError as exc:
        raise SettingsError(f"{name}={path} cannot be read: {exc.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())

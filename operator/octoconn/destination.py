"""Pure decisions about a secret sync's Octopus destination that Infisical does not make for the user.

Infisical's Octopus sync manages only sensitive variables: it deletes and replaces those whose names it writes and
keeps every other variable exactly as it reads it. A non-sensitive variable that has a name the sync writes is
therefore kept next to the sensitive one Infisical adds, and Octopus holds two variables of that name: which value a
deployment sees then depends on scope specificity, or on nothing at all when the scopes are equal. Infisical never
says so; these functions let the operator and ``octoconn check`` say it before a deployment finds out.

A ``keySchema`` change is the other thing Infisical leaves unsaid: its next sync deletes only what matches the new
schema, so the variables written under the old names stay in Octopus. The operator keeps them too (it cannot show
which of them the sync wrote rather than a person) and names them once, in an Event (``left_under_old_schema``).

No I/O, no client: the inputs are what ``OctopusClient.inspect_destination`` returned and the names a sync writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from octoconn.conditions import Event

if TYPE_CHECKING:
    from octoconn.models import Condition
    from octoconn.remote import OctopusVariable

SECRET_KEY = "{{secretKey}}"
ENVIRONMENT = "{{environment}}"
# DestinationVerified stays True with this reason: the sync works, but a deployment may see the wrong value.
CLASH_REASON = "VariableNameClash"
LEFT_REASON = "VariablesLeftInOctopus"


def managed_by_infisical(variable: OctopusVariable) -> bool:
    """Infisical's own split when it syncs: ``IsSensitive`` or type ``Sensitive`` is managed, anything else is kept."""
    return variable.is_sensitive or variable.type == "Sensitive"


def variable_names(secret_keys: Iterable[str], *, key_schema: str | None, environment: str) -> list[str]:
    """The Octopus variable names a sync writes for these Infisical secret keys (its ``keySchema`` applied).

    ``environment`` is the Infisical environment slug that ``{{environment}}`` stands for.
    """
    if not key_schema:
        return list(dict.fromkeys(secret_keys))
    rendered = key_schema.replace(ENVIRONMENT, environment)
    return list(dict.fromkeys(rendered.replace(SECRET_KEY, key) for key in secret_keys))


def clashing_names(variables: Iterable[OctopusVariable], written: Iterable[str]) -> list[str]:
    """The names in ``written`` that a non-sensitive variable of the project also has, in ``written``'s order.

    Octopus treats variable names without regard to case (``#{db_pass}`` and ``#{DB_PASS}`` are one variable to a
    deployment), while Infisical compares them exactly, so a kept ``db_pass`` clashes with a written ``DB_PASS`` too.
    Every scope counts: Infisical keeps the other variable whatever its scope.
    """
    kept = {v.name.casefold() for v in variables if not managed_by_infisical(v)}
    return [name for name in dict.fromkeys(written) if name.casefold() in kept]


def clash_message(clashes: list[str], *, where: str) -> str:
    """What to tell the user about ``clashing_names``' answer (not empty)."""
    shown = ", ".join(clashes[:10]) + (f" and {len(clashes) - 10} more" if len(clashes) > 10 else "")
    return (
        f"{where} already has non-sensitive variables named {shown}. Infisical keeps them and adds its sensitive "
        "variables of the same names, so Octopus holds two variables of each name and a deployment may see either "
        "value. Delete or rename those variables in Octopus, or give the sync a keySchema that keeps its names apart."
    )


def clash_events(before: Condition | None, after: Condition | None) -> list[Event]:
    """One Warning Event when a destination check first finds clashing names, or finds other ones; none again for
    the same finding (the condition in status remembers it across periodic checks and restarts)."""
    if after is None or after.reason != CLASH_REASON:
        return []
    if before is not None and (before.reason, before.message) == (after.reason, after.message):
        return []
    return [Event("Warning", CLASH_REASON, after.message)]


def matches_schema(name: str, key_schema: str | None, environment: str) -> bool:
    """Infisical's deletion pattern: could this schema have produced ``name`` (every name without a schema)?"""
    if not key_schema:
        return True
    rendered = key_schema.replace(ENVIRONMENT, environment)
    prefix, _, suffix = rendered.partition(SECRET_KEY)
    suffix = suffix.replace(SECRET_KEY, "")
    if len(name) < len(prefix) + len(suffix) or not name.startswith(prefix) or not name.endswith(suffix):
        return False
    middle = name[len(prefix) : len(name) - len(suffix)]
    return not (("/" in prefix or "/" in suffix) and "/" in middle)


def left_under_old_schema(
    variables: Iterable[OctopusVariable], *, old: tuple[str | None, str], new: tuple[str | None, str]
) -> list[str]:
    """Sensitive variables that match the old (keySchema, environment) but not the new one: no sync of the new
    schema writes or deletes them, so they stay in Octopus for good. Non-sensitive ones were never Infisical's."""
    return list(
        dict.fromkeys(
            v.name
            for v in variables
            if managed_by_infisical(v) and matches_schema(v.name, *old) and not matches_schema(v.name, *new)
        )
    )


def schema_change(remote: str | None, wanted: str | None) -> str | None:
    """The keySchema Infisical's sync still has ("" for none) when the spec asks for another one; else None."""
    return (remote or "") if (remote or "") != (wanted or "") else None


def left_behind_event(
    variables: Iterable[OctopusVariable], *, old: tuple[str, str], new: tuple[str | None, str], where: str
) -> Event | None:
    """The Warning for a keySchema change from ``old`` to ``new`` ((schema, environment) each), or None when the
    old schema leaves nothing behind."""
    names = left_under_old_schema(variables, old=old, new=new)
    if not names:
        return None
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return Event(
        "Warning",
        LEFT_REASON,
        f"keySchema changed from {old[0] or 'none'} to {new[0] or 'none'}: the sensitive variables {shown} of {where} "
        "match the old schema and no longer the new one, so Infisical neither updates nor deletes them. They are "
        "kept, because the operator cannot tell which of them the sync wrote and which a person made; delete those "
        "you no longer need in Octopus.",
    )

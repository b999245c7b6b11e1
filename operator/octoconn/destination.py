"""Pure decisions about a secret sync's Octopus destination that Infisical does not make for the user.

Infisical's Octopus sync manages only sensitive variables: it deletes and replaces those whose names it writes and
keeps every other variable exactly as it reads it. A non-sensitive variable that has a name the sync writes is
therefore kept next to the sensitive one Infisical adds, and Octopus holds two variables of that name: which value a
deployment sees then depends on scope specificity, or on nothing at all when the scopes are equal. Infisical never
says so; these functions let the operator and ``octoconn check`` say it before a deployment finds out.

No I/O, no client: the inputs are what ``OctopusClient.inspect_destination`` returned and the names a sync writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from octoconn.remote import OctopusVariable

SECRET_KEY = "{{secretKey}}"
ENVIRONMENT = "{{environment}}"


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

"""The value types policy keys share: strict models, bounded non-negative limits, names, globs."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from baton.schemas.names import MAX_NAME, fold_glob, fold_keys, normal_name

__all__ = [
    "MAX_LIMIT",
    "Globs",
    "Names",
    "NonNegInt",
    "NonNegNumber",
    "PositiveNumber",
    "StrictModel",
    "name_keyed",
]

#: the largest integer limit: 2**53, exact as a float (the engine compares budgets as floats)
#: and far inside the 64-bit range the policy hash's JSON encoder takes. A bigger one made
#: the policy hash raise, and a worker that read it from the control topic crash-looped.
MAX_LIMIT = 2**53


def _a_number(value: Any) -> Any:
    # YAML reads yes/no/on/off as booleans, and pydantic would take them as 1.0 and 0.0:
    # `shared_max_usd: no` (meant: no limit) became a limit of 0 USD
    if isinstance(value, bool):
        raise ValueError("must be a number (yes/no/on/off/true/false are booleans in YAML)")
    # checked here, before the bounds: NaN fails `>= 0` first and would be named for that
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


NonNegInt = Annotated[int, Field(ge=0, le=MAX_LIMIT, strict=True)]
NonNegNumber = Annotated[float, BeforeValidator(_a_number), Field(ge=0, allow_inf_nan=False)]
PositiveNumber = Annotated[float, BeforeValidator(_a_number), Field(gt=0, allow_inf_nan=False)]
#: globs over names (agents, tools, actions, task kinds, approvers), folded like the names
#: they match (baton.schemas.names): `Billing.*` blocks `billing.refund`, and the reverse
Globs = list[Annotated[str, Field(min_length=1), AfterValidator(fold_glob)]]
#: names the policy lists (release_ownership_on statuses), folded like the events' names
Names = list[Annotated[str, Field(min_length=1, max_length=MAX_NAME), AfterValidator(normal_name)]]


def name_keyed(what: str) -> BeforeValidator:
    """A mapping keyed by names (roles: agents; tenants; approval.keys and operators: signers)
    with its keys folded; two keys that fold to one name are refused, naming both."""
    return BeforeValidator(lambda mapping: fold_keys(mapping, what))


class StrictModel(BaseModel):
    """A block of the policy: unknown keys are errors, values never change once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

"""The value types policy keys share: strict models, bounded non-negative limits, glob lists."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

__all__ = ["MAX_LIMIT", "Globs", "NonNegInt", "NonNegNumber", "PositiveNumber", "StrictModel"]

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
Globs = list[Annotated[str, Field(min_length=1)]]


class StrictModel(BaseModel):
    """A block of the policy: unknown keys are errors, values never change once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

"""The value types policy keys share: strict models, non-negative limits, glob lists."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Globs", "NonNegInt", "NonNegNumber", "PositiveNumber", "StrictModel"]

NonNegInt = Annotated[int, Field(ge=0, strict=True)]
NonNegNumber = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveNumber = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Globs = list[Annotated[str, Field(min_length=1)]]


class StrictModel(BaseModel):
    """A block of the policy: unknown keys are errors, values never change once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

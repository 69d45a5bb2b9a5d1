"""Building blocks of the config schema: the strict section base, range aliases, registry checks.

Sections are strict pydantic models: YAML and `--set` values keep their parsed type, so "abc" or
true is not an int and 3 is not a str; a float key takes an int, and a number PyYAML left a
string (1e-3). Defaults are not re-validated.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field


class Section(BaseModel):
    """One config section: unknown keys, wrong types and NaN/inf numbers are errors."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class BadKey(ValueError):
    """A cross-field check failed: `key` (within its section) and the full reason."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _yaml_float(value):
    # YAML 1.1 (PyYAML) reads 1e-3 as a string (it wants 1.0e-3): take what float() takes
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


Float = Annotated[float, BeforeValidator(_yaml_float)]
PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[Float, Field(gt=0)]
NonNegFloat = Annotated[Float, Field(ge=0)]
Fraction = Annotated[Float, Field(ge=0, le=1)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


def registry(names: Callable[[], Collection[str]]) -> AfterValidator:
    """A validator admitting the keys of a registry, read when a value is checked (so a new
    registry entry needs no schema change, and torch-importing registries load lazily)."""

    def check(value: str) -> str:
        valid = names()
        if value not in valid:
            raise ValueError(f"must be one of {sorted(valid)}")
        return value

    return AfterValidator(check)

"""The YAML schema of a search space, validated with pydantic on load.

    dimensions:                 # name -> dimension (order = the order they are decided in)
      num_patches:
        type: choice            # choice | int | float
        values: [0, 4, 9, 16, 25]
        maps_to: model.num_patches   # optional: derived from the name when a config field has it
      local_aggregation:
        type: choice
        values: [stitch, max, mean, weighted]
        condition: {num_patches: [4, 9, 16, 25]}   # active only when every listed dimension is
                                                   # active and has one of the listed values
      lr: {type: float, low: 1.0e-4, high: 0.1, log: true}
      epochs: {type: int, low: 10, high: 60, step: 10}
    constants: {train.seed: 0}  # fixed values by target path (or nested: {train: {seed: 0}})
    presets:                    # named points: every active dimension, no inactive one
      baseline: {num_patches: 0, lr: 0.01, epochs: 30}
    search: {...}               # optional: `search_spaces.spec.SearchSpec`

Errors name the file and the YAML path: `unified.yaml: dimensions.num_patches.values: empty choice`.
YAML is read with a safe loader only, and a key given twice is an error (`search_spaces.yamlio`).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Literal, Optional, Sequence, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from typing_extensions import Annotated

from fer_models.errors import UserError, UserPathError

from .config import SECTION_CLASSES, SECTIONS
from .spec import SearchSpec
from .yamlio import load_yaml

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED = ("unified", "quickstart")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCALARS = (str, int, float, bool, type(None))


class SpaceError(UserError):
    """A fault in a space file or a point: the message names the file/YAML path, value and expectation."""


# ---------------------------------------------------------------------------------------------
# values
def is_scalar(v: Any) -> bool:
    return isinstance(v, _SCALARS)


def same_value(a: Any, b: Any) -> bool:
    """Equality that keeps bools apart from numbers (True is not 1) and None apart from all."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def index_of(value: Any, values: Sequence[Any]) -> int:
    for i, v in enumerate(values):
        if same_value(value, v):
            return i
    return -1


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ---------------------------------------------------------------------------------------------
# dimensions
class _Dim(BaseModel):
    model_config = ConfigDict(extra="forbid")

    maps_to: Optional[str] = Field(None, description="target field, 'model.x' / 'train.x' / 'data.x'; default: from the name")
    condition: Dict[str, List[Any]] = Field(default_factory=dict)
    description: Optional[str] = None

    @field_validator("condition")
    @classmethod
    def _condition_values(cls, v: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
        for parent, allowed in v.items():
            if not allowed:
                raise UserError(f"condition on {parent!r}: empty list of allowed values")
            for x in allowed:
                if not is_scalar(x):
                    raise UserError(f"condition on {parent!r}: {x!r} is not a scalar value")
        return v

    # overridden
    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def support(self) -> Optional[List[Any]]:
        """Every value (choice, int), or None (float: a continuum)."""
        return None


class ChoiceDim(_Dim):
    type: Literal["choice"]
    values: List[Any]

    @field_validator("values")
    @classmethod
    def _values(cls, v: List[Any]) -> List[Any]:
        if not v:
            raise UserError("empty choice: give at least one value")
        for i, x in enumerate(v):
            if not is_scalar(x):
                raise UserError(f"values[{i}]: {x!r} is not a scalar (string, number, bool or null)")
            if index_of(x, v[:i]) >= 0:
                raise UserError(f"values[{i}]: {x!r} is listed twice")
        return v

    def check(self, value: Any) -> Any:
        i = index_of(value, self.values)
        if i < 0:
            raise UserError(f"{value!r} is not one of {self.values}")
        return self.values[i]

    def support(self) -> List[Any]:
        return list(self.values)

    def describe(self) -> str:
        return "choice " + ", ".join("null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
                                     for v in self.values)


class IntDim(_Dim):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @field_validator("low", "high", "step", mode="before")
    @classmethod
    def _strict_int(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int):
            raise UserError(f"expected an integer, got {v!r}")
        return v

    @model_validator(mode="after")
    def _range(self) -> "IntDim":
        if self.low > self.high:
            raise UserError(f"low={self.low} > high={self.high}")
        if self.log and self.low <= 0:
            raise UserError(f"log range needs low > 0, got low={self.low}")
        if self.log and self.step != 1:
            raise UserError("log: true needs step 1")
        return self

    def check(self, value: Any) -> Any:
        if not _is_number(value) or (isinstance(value, float) and not value.is_integer()):
            raise UserError(f"{value!r} is not an integer (expected an int in [{self.low}, {self.high}])")
        value = int(value)
        if not self.low <= value <= self.high:
            raise UserError(f"{value} is outside [{self.low}, {self.high}]")
        if (value - self.low) % self.step:
            raise UserError(f"{value} is not on the grid {self.low}, {self.low + self.step}, ... (step {self.step})")
        return value

    def support(self) -> List[Any]:
        return list(range(self.low, self.high + 1, self.step))

    def describe(self) -> str:
        extra = (f" step {self.step}" if self.step != 1 else "") + (" log" if self.log else "")
        return f"int [{self.low}, {self.high}]{extra}"


class FloatDim(_Dim):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: Optional[float] = Field(None, gt=0)

    @field_validator("low", "high", "step", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        if v is not None and not _is_number(v):
            raise UserError(f"expected a number, got {v!r}")
        return v

    @model_validator(mode="after")
    def _range(self) -> "FloatDim":
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise UserError("low and high must be finite")
        if self.low > self.high:
            raise UserError(f"low={self.low} > high={self.high}")
        if self.log and self.low <= 0:
            raise UserError(f"log range needs low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise UserError("log: true and step cannot be combined")
        return self

    def check(self, value: Any) -> Any:
        if not _is_number(value):
            raise UserError(f"{value!r} is not a number (expected a float in [{self.low}, {self.high}])")
        value = float(value)
        tol = 1e-9 * max(1.0, abs(self.low), abs(self.high))
        if not self.low - tol <= value <= self.high + tol:
            raise UserError(f"{value} is outside [{self.low}, {self.high}]")
        if self.step is not None:
            k = (value - self.low) / self.step
            if abs(k - round(k)) > 1e-6:
                raise UserError(f"{value} is not on the grid {self.low}, {self.low + self.step}, ... (step {self.step})")
        return min(max(value, self.low), self.high)

    def describe(self) -> str:
        extra = (f" step {self.step}" if self.step is not None else "") + (" log" if self.log else "")
        return f"float [{self.low:g}, {self.high:g}]{extra}"


Dimension = Annotated[Union[ChoiceDim, IntDim, FloatDim], Field(discriminator="type")]


class SpaceFile(BaseModel):
    """The raw file, section by section (cross-section checks are in `SearchSpace`)."""

    model_config = ConfigDict(extra="forbid")

    description: Optional[str] = None
    dimensions: Dict[str, Dimension] = Field(..., min_length=1)
    constants: Dict[str, Any] = Field(default_factory=dict)
    presets: Dict[str, Dict[str, Any]] = Field(default_factory=dict)
    search: Optional[SearchSpec] = None

    @field_validator("constants", mode="before")
    @classmethod
    def _flatten_constants(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        flat: Dict[str, Any] = {}
        for k, x in v.items():
            if k in SECTIONS and isinstance(x, dict):
                flat.update({f"{k}.{kk}": xx for kk, xx in x.items()})
            else:
                flat[k] = x
        return flat


# ---------------------------------------------------------------------------------------------
# loading
def fmt_path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _pydantic_errors(exc: ValidationError, where: str) -> List[str]:
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        # drop the discriminator tag pydantic puts in the location of a tagged union member
        if len(loc) > 2 and loc[0] == "dimensions" and loc[2] in ("choice", "int", "float"):
            del loc[2]
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key (not part of the schema here)"
        elif kind == "missing":
            msg = "missing required key"
        elif kind == "union_tag_invalid":
            msg = f"unknown dimension type {err['input'].get('type')!r} (expected choice, int or float)"
        elif kind == "union_tag_not_found":
            msg = "missing 'type' (choice, int or float)"
        else:
            msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            if (kind.endswith(("_type", "_parsing")) or kind in ("literal_error", "enum")
                    or isinstance(err["input"], (int, float, str))):  # the value of a bound or rule broken
                msg += f" (got {err['input']!r})"
        lines.append(f"{where}: {fmt_path(loc)}: {msg}")
    return lines


def resolve_space_path(name: Union[str, Path]) -> Path:
    """A file path, or the bare name of a shipped space (`unified`, `quickstart`)."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    stem = str(name)[:-5] if str(name).endswith(".yaml") else str(name)
    shipped = PACKAGE_DIR / f"{Path(stem).name}.yaml"
    if ("/" not in str(name)) and shipped.is_file():
        return shipped
    if p.is_dir():
        raise UserPathError(f"space file {str(name)!r} is a folder, not a file (a space YAML file, or a shipped "
                            f"space: {', '.join(SHIPPED)})")
    raise UserPathError(f"space file {str(name)!r}: no such file (shipped spaces: {', '.join(SHIPPED)})")


def read_yaml(path: Path) -> Any:
    """A space file's content (`yamlio.load_yaml`: duplicate keys refused, errors with line and column)."""
    return load_yaml(path, what="space file", error=SpaceError)


# ---------------------------------------------------------------------------------------------
# targets
def field_names(section: str) -> Tuple[str, ...]:
    return tuple(SECTION_CLASSES[section].model_fields)


def derive_target(name: str) -> List[str]:
    return [f"{s}.{name}" for s in SECTIONS if name in SECTION_CLASSES[s].model_fields]


def check_target(target: str) -> Optional[str]:
    """None when `target` is `section.field` of a trial config, else what is wrong."""
    sec, _, fld = target.partition(".")
    if sec not in SECTIONS or not fld:
        return f"target {target!r} must be 'model.<field>', 'train.<field>' or 'data.<field>'"
    if fld not in SECTION_CLASSES[sec].model_fields:
        return f"{sec} config has no field {fld!r} (fields: {', '.join(field_names(sec))})"
    return None


def field_value_error(target: str, value: Any) -> Optional[str]:
    """Check one value against one config field alone (its type, bounds and field validators)."""
    sec, _, fld = target.partition(".")
    try:
        SECTION_CLASSES[sec].model_validate({fld: value})
    except ValidationError as exc:
        for err in exc.errors():
            if tuple(err["loc"])[:1] == (fld,):
                return f"{value!r} is not a valid {target}: {err['msg'].removeprefix('Value error, ')}"
    return None


def field_is_int(target: str) -> bool:
    sec, _, fld = target.partition(".")
    return SECTION_CLASSES[sec].model_fields[fld].annotation is int

"""`SearchSpace`: a loaded, cross-checked space; points and their validation into a `TrialConfig`.

A point is `{dimension: value}` holding exactly the active dimensions. A dimension is active when
every dimension its condition names is active and has one of the listed values (so conditions
chain). Dimensions are decided in a topological order of the conditions (the file's order where
the conditions allow).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from pydantic import ValidationError

from .config import TrialConfig
from .schema import (ChoiceDim, FloatDim, SpaceError, SpaceFile, _Dim, _NAME, _pydantic_errors, check_target,
                     derive_target, field_is_int, field_value_error, index_of, read_yaml, resolve_space_path)


class SearchSpace:
    """A validated space. Build one with `search_spaces.load_space(...)`."""

    def __init__(self, raw: SpaceFile, where: str = "<space>", path: Optional[Path] = None):
        self.raw = raw
        self.where = where
        self.path = path
        self.dimensions: Dict[str, _Dim] = dict(raw.dimensions)
        self.constants: Dict[str, Any] = dict(raw.constants)
        self.presets: Dict[str, Dict[str, Any]] = {}
        self.search = raw.search
        self.targets: Dict[str, str] = {}
        errors: List[str] = []
        self._check_dimensions(errors)
        if not errors:
            self._check_conditions(errors)
        if not errors:
            self.order = self._topological_order(errors)
        if not errors:
            self._check_targets_exclusive(errors)
            self._check_constants(errors)
        if not errors:
            for pname, point in raw.presets.items():
                try:
                    self.presets[pname] = self.check_point(point, where=f"presets.{pname}")
                except SpaceError as exc:
                    errors.append(str(exc))
            if self.search is not None:
                for i, p in enumerate(self.search.presets):
                    if p not in self.presets:
                        errors.append(self._err(f"search.presets[{i}]",
                                                f"unknown preset {p!r} (this file defines: {', '.join(self.presets) or 'none'})"))
                for n, vals in self.search.grid.items():
                    if n not in self.dimensions:
                        errors.append(self._err(f"search.grid.{n}", f"unknown dimension {n!r} "
                                                                    f"(dimensions: {', '.join(self.dimensions)})"))
                        continue
                    if not vals:
                        errors.append(self._err(f"search.grid.{n}", "empty list of grid values"))
                    for i, v in enumerate(vals):
                        try:
                            self.dimensions[n].check(v)
                        except ValueError as exc:
                            errors.append(self._err(f"search.grid.{n}[{i}]", f"dimension {n!r}: {exc}"))
        if errors:
            raise SpaceError("\n".join(errors))

    # ---------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        if self.search is not None and self.search.name:
            return self.search.name
        return self.path.stem if self.path is not None else self.where

    def _err(self, ypath: str, msg: str) -> str:
        return f"{self.where}: {ypath}: {msg}"

    def _check_dimensions(self, errors: List[str]) -> None:
        for name, dim in self.dimensions.items():
            at = f"dimensions.{name}"
            if not _NAME.match(name):
                errors.append(self._err(at, f"dimension name {name!r} must be an identifier (letters, digits, _)"))
                continue
            if dim.maps_to is not None:
                bad = check_target(dim.maps_to)
                if bad:
                    errors.append(self._err(f"{at}.maps_to", bad))
                    continue
                target = dim.maps_to
            else:
                found = derive_target(name)
                if len(found) != 1:
                    why = "no config field has this name" if not found else f"ambiguous: {', '.join(found)}"
                    errors.append(self._err(at, f"cannot derive the target from the name ({why}); "
                                                "add maps_to: model.<field> | train.<field> | data.<field>"))
                    continue
                target = found[0]
            self.targets[name] = target
            # every value (or both bounds) must suit the target field on its own
            if isinstance(dim, ChoiceDim):
                for i, v in enumerate(dim.values):
                    bad = field_value_error(target, v)
                    if bad:
                        errors.append(self._err(f"{at}.values[{i}]", bad))
            else:
                if isinstance(dim, FloatDim) and field_is_int(target):
                    errors.append(self._err(f"{at}.type", f"{target} is an integer field: use type: int"))
                    continue
                for key in ("low", "high"):
                    bad = field_value_error(target, getattr(dim, key))
                    if bad:
                        errors.append(self._err(f"{at}.{key}", bad))

    def _check_conditions(self, errors: List[str]) -> None:
        for name, dim in self.dimensions.items():
            for parent, allowed in dim.condition.items():
                at = f"dimensions.{name}.condition.{parent}"
                if parent == name:
                    errors.append(self._err(at, "a dimension cannot be conditioned on itself"))
                    continue
                if parent not in self.dimensions:
                    errors.append(self._err(at, f"condition on unknown dimension {parent!r} "
                                                f"(dimensions: {', '.join(self.dimensions)})"))
                    continue
                pdim = self.dimensions[parent]
                if isinstance(pdim, FloatDim):
                    errors.append(self._err(at, f"{parent!r} is a float dimension: conditions can name choice and int dimensions only"))
                    continue
                for i, v in enumerate(allowed):
                    try:
                        pdim.check(v)
                    except ValueError as exc:
                        errors.append(self._err(f"{at}[{i}]", f"not a value of dimension {parent!r}: {exc}"))

    def _topological_order(self, errors: List[str]) -> List[str]:
        order: List[str] = []
        state: Dict[str, int] = {}  # 1 = on the stack, 2 = placed

        def visit(n: str, stack: List[str]) -> bool:
            if state.get(n) == 2:
                return True
            if state.get(n) == 1:
                cyc = stack[stack.index(n):] + [n]
                errors.append(self._err(f"dimensions.{n}.condition",
                                        "cycle of conditions: " + " -> ".join(cyc)))
                return False
            state[n] = 1
            for p in self.dimensions[n].condition:
                if not visit(p, stack + [n]):
                    return False
            state[n] = 2
            order.append(n)
            return True

        for n in self.dimensions:
            if not visit(n, []):
                break
        return order

    def _check_targets_exclusive(self, errors: List[str]) -> None:
        """Two dimensions may set one field only when their conditions exclude each other."""
        by_target: Dict[str, List[str]] = {}
        for n in self.order:
            by_target.setdefault(self.targets[n], []).append(n)
        for target, names in by_target.items():
            for i, a in enumerate(names):
                for b in names[i + 1:]:
                    ca, cb = self.dimensions[a].condition, self.dimensions[b].condition
                    exclusive = any(p in cb and all(index_of(v, cb[p]) < 0 for v in ca[p]) for p in ca)
                    if not exclusive:
                        errors.append(self._err(
                            f"dimensions.{b}.maps_to",
                            f"{target} is also set by dimension {a!r}; two dimensions may share a target only "
                            f"when their conditions exclude each other (one condition dimension, disjoint values)"))

    def _check_constants(self, errors: List[str]) -> None:
        dim_of = {t: n for n, t in self.targets.items()}
        for key, value in self.constants.items():
            at = f"constants.{key}"
            bad = check_target(key)
            if bad:
                errors.append(self._err(at, bad))
                continue
            if key in dim_of:
                errors.append(self._err(at, f"{key} is also the target of dimension {dim_of[key]!r}: a constant or a dimension, not both"))
                continue
            bad = field_value_error(key, value)
            if bad:
                errors.append(self._err(at, bad))

    # ---------------------------------------------------------------------------------------
    # activity
    def is_active(self, name: str, decided: Mapping[str, Any]) -> bool:
        """Active given the values decided so far (inactive dimensions are absent from `decided`)."""
        for parent, allowed in self.dimensions[name].condition.items():
            if parent not in decided or index_of(decided[parent], allowed) < 0:
                return False
        return True

    def why_inactive(self, name: str, decided: Mapping[str, Any]) -> str:
        for parent, allowed in self.dimensions[name].condition.items():
            if parent not in decided:
                return f"it applies only when {parent!r} is active (and in {allowed}), and {parent!r} is inactive here"
            if index_of(decided[parent], allowed) < 0:
                return f"it applies only when {parent} is one of {allowed}; here {parent} = {decided[parent]!r}"
        return ""

    def condition_text(self, name: str) -> str:
        cond = self.dimensions[name].condition
        return " and ".join(f"{p} in [{', '.join(yaml_scalar(x) for x in v)}]" for p, v in cond.items())

    def check_point(self, point: Any, where: str = "point") -> Dict[str, Any]:
        """Structural check: known dimensions, values inside them, every active dimension present
        and no inactive one. Returns the point with canonical values, in decision order."""
        if not isinstance(point, Mapping):
            raise SpaceError(self._err(where, f"a point is a mapping of dimension -> value, got {type(point).__name__}"))
        errors = []
        for k in point:
            if k not in self.dimensions:
                errors.append(self._err(f"{where}.{k}", f"unknown dimension {k!r} (dimensions: {', '.join(self.dimensions)})"))
        out: Dict[str, Any] = {}
        for n in self.order:
            active = self.is_active(n, out)
            if n in point and not active:
                errors.append(self._err(f"{where}.{n}", f"dimension {n!r} = {point[n]!r} is inactive: "
                                                        f"{self.why_inactive(n, out)}; leave it out"))
            elif active and n not in point:
                cond = self.condition_text(n)
                errors.append(self._err(where, f"missing dimension {n!r} ({self.dimensions[n].describe()})"
                                               + (f", active because {cond}" if cond else "")))
            elif active:
                try:
                    out[n] = self.dimensions[n].check(point[n])
                except ValueError as exc:
                    errors.append(self._err(f"{where}.{n}", f"dimension {n!r}: {exc}"))
        if errors:
            raise SpaceError("\n".join(errors))
        return out

    # ---------------------------------------------------------------------------------------
    def validate(self, point: Mapping[str, Any], where: str = "point") -> TrialConfig:
        """Point -> `TrialConfig` that builds and trains as it is; errors name the dimension, the
        value and what was expected."""
        from .fit import fit_errors

        pt = self.check_point(point, where=where)
        sections: Dict[str, Dict[str, Any]] = {"model": {}, "train": {}, "data": {}}
        source: Dict[str, str] = {}
        for key, value in self.constants.items():
            sec, _, fld = key.partition(".")
            sections[sec][fld] = value
            source[key] = f"constant {key}"
        for n, value in pt.items():
            sec, _, fld = self.targets[n].partition(".")
            sections[sec][fld] = value
            source[self.targets[n]] = f"dimension {n!r}"
        m = sections["model"]
        if "global_attention" in m and m["global_attention"] is not None and m["global_attention"] == m.get("attention", "none"):
            m["global_attention"] = None  # the same as the local attention: stored as 'same' (null)
        try:
            cfg = TrialConfig.model_validate(sections)
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                loc = tuple(str(x) for x in err["loc"])
                msg = err["msg"].removeprefix("Value error, ")
                key = ".".join(loc[:2])
                if len(loc) >= 2 and key in source:
                    lines.append(self._err(where, f"{source[key]} = {sections[loc[0]][loc[1]]!r}: {msg}"))
                else:
                    sec = loc[0] if loc else "config"
                    involved = [f"{n}={v!r}" for n, v in pt.items() if self.targets[n].startswith(sec + ".")]
                    lines.append(self._err(where, f"{sec} config ({', '.join(involved)}): {msg}"))
            raise SpaceError("\n".join(lines)) from None
        bad = fit_errors(cfg)
        if bad:
            dims = {t.split(".", 1)[1]: n for n, t in self.targets.items()}
            named = ", ".join(f"{dims[f]}={v!r}" for f, v in bad[1].items() if f in dims)
            raise SpaceError(self._err(where, f"{bad[0]} (from {named or 'the constants'})"))
        return cfg

    # ---------------------------------------------------------------------------------------
    def choice_dims(self) -> List[str]:
        return [n for n in self.order if isinstance(self.dimensions[n], ChoiceDim)]

    def section_of(self, name: str) -> str:
        return self.targets[name].split(".", 1)[0]

    def describe_rows(self) -> List[Tuple[str, str, str, str]]:
        return [(n, self.dimensions[n].describe(), self.targets[n], self.condition_text(n)) for n in self.order]


def yaml_scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def log_uniform(rng, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def load_space(source: Union[str, Path, Dict[str, Any]], name: Optional[str] = None) -> "SearchSpace":
    """Load and validate a space: a file path, a shipped name (`unified`), or an already-parsed dict."""
    if isinstance(source, dict):
        data, where, path = source, name or "<space>", None
    else:
        path = resolve_space_path(source)
        data, where = read_yaml(path), str(source) if Path(str(source)).is_file() else path.name
    if not isinstance(data, dict):
        raise SpaceError(f"{where}: expected a mapping with 'dimensions' at the top level, "
                         f"got {type(data).__name__}" + (" (empty file)" if data is None else ""))
    try:
        raw = SpaceFile.model_validate(data)
    except ValidationError as exc:
        raise SpaceError("\n".join(_pydantic_errors(exc, where))) from None
    return SearchSpace(raw, where=where, path=path)

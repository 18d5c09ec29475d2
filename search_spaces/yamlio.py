"""Reading what a user wrote: YAML (and JSON) files of spaces, points and model configs.

`load_yaml(path)` is the one reader for those files. It refuses what PyYAML accepts silently:
a key given twice in one mapping (PyYAML keeps the last, so a second `dimensions:` block would
replace the first without a word). It also reads the floats YAML 1.1 leaves as strings
(`1e-4`, `5e3`), and turns every problem into a `UserError` naming the file, the line and the
column. A `.json` file is parsed as JSON (its own error positions, duplicate keys refused too).
Safe loading only: no Python objects are ever constructed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple, Type, Union

import yaml

from fer_models.errors import UserError, UserPathError

__all__ = ["UniqueKeyLoader", "load_yaml", "parse_yaml"]


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (merge keys `<<` may still be
    overridden, as YAML intends), and reads `1e-4` as a float."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: Dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise _DuplicateKey(key, first.start_mark, key_node.start_mark)
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: yaml.Mark, second: yaml.Mark):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first, self.second = key, first, second


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def parse_yaml(text: str, where: str = "<yaml>", error: Type[UserError] = UserError) -> Any:
    """Parse YAML text with `UniqueKeyLoader`; errors name `where`, the line and the column."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise error(f"{where}: duplicate key {exc.key!r} at line {exc.second.line + 1} (first at line "
                    f"{exc.first.line + 1}): the second would silently replace the first; give each key once") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        pos = f" ({_at(mark)})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{where}: not a YAML file{pos}: {problem}") from None


def _json_pairs(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def load_yaml(path: Union[str, Path], what: str = "file", error: Type[UserError] = UserError) -> Any:
    """The parsed content of a user's YAML (or `.json`) file.

    `what` names the file's role in messages (`--config`, `space file`, ...); `error` is the
    `UserError` subclass to raise for bad content (a missing path is a `UserPathError`).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserPathError(f"{what} {str(path)!r} is a folder, not a file")
    if not p.is_file():
        raise UserPathError(f"{what} {str(path)!r}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        kind = "JSON" if p.suffix.lower() == ".json" else "YAML"
        raise error(f"{path}: not a {kind} file (not UTF-8 text: byte {exc.object[exc.start]:#04x} at line {line})") from None
    except OSError as exc:
        raise UserPathError(f"{what} {str(path)!r}: cannot be read ({exc.strerror})") from None
    if p.suffix.lower() == ".json":
        try:
            return json.loads(text, object_pairs_hook=_json_pairs)
        except json.JSONDecodeError as exc:
            raise error(f"{path}: not a JSON file (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
        except ValueError as exc:  # a duplicate key: JSON is YAML, whose loader knows the lines
            parse_yaml(text, str(path), error)
            raise error(f"{path}: {exc}: the second would silently replace the first; give each key once") from None
    return parse_yaml(text, str(path), error)

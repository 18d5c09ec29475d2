"""Extension points: one `Registry` per kind of thing a user can add (an attention type, a loss
weighting, an optimizer, a learning-rate schedule, a Ray scheduler, a search algorithm, a dataset
format). Adding one is one class or factory plus one `register` line; config fields validate
their names against the registry (`registered_name`), so no list of names is kept by hand.

An entry may declare the config fields it reads (`settings`, name -> what it means) and free
metadata (`meta`). An entry may also be a lazy "module:attribute" string, resolved on first use:
a layer names an implementation that lives in a layer above it without importing it (the Ray
schedulers in `runners`, validated by `search_spaces`).

Written here rather than taken from a library: timm's and Ray's registries hold one kind each
and neither validates pydantic fields nor declares settings.
"""
from __future__ import annotations

import importlib
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional

from .errors import UserError

__all__ = ["DuplicateRegistrationWarning", "Entry", "REGISTRIES", "Registry", "registered_name"]


class DuplicateRegistrationWarning(UserWarning):
    """A name registered a second time: the later entry replaces the earlier one."""


@dataclass
class Entry:
    name: str
    target: Any  # the class or factory, or a "module:attribute" string until first use
    settings: Dict[str, str] = field(default_factory=dict)  # config field -> what it means
    meta: Dict[str, Any] = field(default_factory=dict)
    doc: str = ""


# every registry by its kind, for documentation and for the test that ties the space to them
REGISTRIES: Dict[str, "Registry"] = {}


class Registry(Mapping[str, Any]):
    """name -> class or factory, in registration order. A read-only mapping (`reg[name]` resolves
    a lazy entry); add with `register`, remove with `unregister`."""

    def __init__(self, kind: str, config_field: str = ""):
        self.kind = kind  # "attention type": how messages name an entry
        self.config_field = config_field  # where a config names one ("model.attention")
        self._entries: Dict[str, Entry] = {}
        REGISTRIES[kind] = self

    # --- adding ---------------------------------------------------------------------------------
    def register(self, name: str, target: Any = None, *, settings: Optional[Mapping[str, str]] = None,
                 doc: str = "", **meta: Any):
        """`reg.register("se", factory)`, or as a decorator: `@reg.register("se")`."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"{self.kind} registry: a name must be a non-empty string without surrounding "
                             f"spaces, got {name!r}")

        def add(obj: Any) -> Any:
            if name in self._entries:
                warnings.warn(f"{self.kind} {name!r} registered twice: the later entry replaces "
                              f"{self._describe(self._entries[name].target)}", DuplicateRegistrationWarning,
                              stacklevel=3)
            text = doc
            if not text and not isinstance(obj, str):  # the first paragraph of its docstring
                text = (inspect.getdoc(obj) or "").split("\n\n")[0].replace("\n", " ")
            self._entries[name] = Entry(name, obj, dict(settings or {}), dict(meta), text)
            return obj

        return add if target is None else add(target)

    def unregister(self, name: str) -> None:
        self._entries.pop(self.checked(name))

    # --- reading --------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        entry = self._entries[name]
        if isinstance(entry.target, str):
            mod, _, attr = entry.target.partition(":")
            entry.target = getattr(importlib.import_module(mod), attr)
        return entry.target

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

    def names(self) -> List[str]:
        return list(self._entries)

    def entry(self, name: str) -> Entry:
        return self._entries[self.checked(name)]

    def settings(self, name: str) -> Dict[str, str]:
        return dict(self.entry(name).settings)

    def meta(self, name: str, key: str, default: Any = None) -> Any:
        return self.entry(name).meta.get(key, default)

    def where(self, key: str, value: Any = True) -> List[str]:
        """The names whose meta[key] == value (e.g. the population-based schedulers)."""
        return [n for n, e in self._entries.items() if e.meta.get(key) == value]

    def checked(self, name: Any) -> str:
        """`name` if registered, else a UserError naming the kind, the value and the valid names."""
        if not isinstance(name, str) or name not in self._entries:
            where = f"{self.config_field}: " if self.config_field else ""
            raise UserError(f"{where}unknown {self.kind} {name!r}; valid: {', '.join(self._entries)}")
        return name

    def build(self, name: str, *args: Any, config: Any = None, **kwargs: Any) -> Any:
        """Call the entry with `args`, `kwargs` and its declared settings read from `config` (an object
        with those attributes, or a mapping): how a trainer builds an entry without knowing it."""
        target = self[self.checked(name)]
        for key in self._entries[name].settings:
            if config is None:
                break
            if isinstance(config, Mapping):
                if key in config:
                    kwargs.setdefault(key, config[key])
            else:
                kwargs.setdefault(key, getattr(config, key))
        return target(*args, **kwargs)

    @staticmethod
    def _describe(target: Any) -> str:
        if isinstance(target, str):
            return target
        return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


def registered_name(registry: Registry, description: str = "") -> Any:
    """A pydantic field type: a string that must be a name of `registry` when validated (checked at
    validation time, so entries registered after the config class was defined count too). The JSON
    schema lists the names registered when the schema is made."""
    from pydantic import AfterValidator
    from typing_extensions import Annotated

    def check(value: str) -> str:
        if value not in registry:
            # pydantic prefixes ValueError messages with "Value error, "; user_error_from_validation strips it
            raise ValueError(f"unknown {registry.kind} {value!r}; valid: {', '.join(registry)}")
        return value

    class _Names:
        def __get_pydantic_json_schema__(self, core_schema, handler):
            schema = handler(core_schema)
            schema["enum"] = list(registry)
            if description:
                schema.setdefault("description", description)
            return schema

    return Annotated[str, AfterValidator(check), _Names()]


"""Task families by name: `get_family("chain_sum", digits=2)`, `get_family("gym:countdown")`,
`get_family("file:data/tasks.jsonl")`.

Built-in families are found by module name under `reasonloop.tasks.families`, so one whose
module is not there yet is simply absent; a module that exists but fails to import fails
loudly. The reasoning-gym and file sources are imported only when asked for, so their
dependencies stay optional.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any

from reasonloop.tasks.base import Family

BUILTIN_MODULES = (
    "addition",
    "chain_sum",
    "sum_above",
    "multiplication",
    "linear_equation",
    "sorting",
    "program",
)
"""Modules of `reasonloop.tasks.families` that define one family each."""

PREFIXES = {"gym": "gym:<dataset>", "file": "file:<path>"}


def families_in(module_name: str) -> list[type[Family]]:
    """The concrete Family classes a family module defines, [] when the module does not exist."""
    full = f"reasonloop.tasks.families.{module_name}"
    try:
        module = importlib.import_module(full)
    except ModuleNotFoundError as e:
        if e.name == full:
            return []
        raise  # the module exists but something it imports is missing: say so
    return [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, Family)
        and obj.__module__ == full
        and not inspect.isabstract(obj)
        and isinstance(getattr(obj, "name", None), str)
    ]


def _builtin() -> dict[str, type[Family]]:
    found: dict[str, type[Family]] = {}
    for module_name in BUILTIN_MODULES:
        for cls in families_in(module_name):
            found[cls.name] = cls
    return found


FAMILIES: dict[str, type[Family]] = _builtin()
"""Built-in families by name."""


def _check_options(name: str, cls: type[Family], options: dict[str, Any]) -> None:
    """A clear error for an option the family does not take (a config typo, usually)."""
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in options:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"task family {name!r} has no option {key!r}{hint}; its options: "
                + (", ".join(accepted) or "none")
            )


def known_names() -> list[str]:
    """Every name `get_family` accepts: the built-ins, then the prefixed sources."""
    return sorted(FAMILIES) + list(PREFIXES.values())


def get_family(spec: str, **options: Any) -> Family:
    """The family named by `spec`, built with `options`.

    `spec` is a built-in name (`chain_sum`), `gym:<dataset>` (a reasoning-gym dataset; options
    go to its config) or `file:<path>` (tasks from a JSONL or Parquet file).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            f"task family must be a non-empty name, got {spec!r}; known: "
            + ", ".join(known_names())
        )
    spec = spec.strip()
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in PREFIXES:
        if not rest:
            raise ValueError(
                f"task family {spec!r}: expected {PREFIXES[prefix]}, e.g. "
                + ("gym:countdown" if prefix == "gym" else "file:tasks.jsonl")
            )
        if prefix == "gym":
            from reasonloop.tasks.gym import GymFamily

            return GymFamily(rest, **options)
        from reasonloop.tasks.files import FileFamily

        return FileFamily(rest, **options)
    if spec in FAMILIES:
        _check_options(spec, FAMILIES[spec], options)
        return FAMILIES[spec](**options)
    if sep:  # a prefix typo such as `gyms:countdown`
        close = difflib.get_close_matches(prefix, list(PREFIXES), n=1, cutoff=0.5)
        suggestion = f"{close[0]}:{rest}" if close else None
    else:
        close = difflib.get_close_matches(spec, list(FAMILIES), n=1, cutoff=0.6)
        suggestion = close[0] if close else None
    hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
    raise ValueError(f"unknown task family {spec!r}{hint}; known: {', '.join(known_names())}")

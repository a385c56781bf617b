"""Reading users' YAML files: a safe bounded loader, strict pydantic models and one error translator."""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A bad value in a user's file: names the file, the key, the value and what is allowed."""

    def __init__(self, path: str | Path, key: str, message: str) -> None:
        self.path, self.key, self.message = str(path), key, message
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")


class UnknownKey(ValueError):
    """Raised by validators for an unknown name inside a mapping (pydantic keeps it as ctx.error)."""

    def __init__(self, name: str, allowed: typing.Iterable[str]) -> None:
        self.name, self.allowed = name, tuple(allowed)
        super().__init__(name)


class AtKey(ValueError):
    """Raised by validators for a bad value deeper than the validated field: `key` extends its location."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


class SecretValue(ValueError):
    """A validator's error whose input must not be echoed (it holds a credential)."""


class Strict(BaseModel):
    """Unknown keys are errors; values are not coerced across types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with a safe loader; every failure is a ConfigError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(path, "", "no such file")
    if path.is_dir():
        raise ConfigError(path, "", "is a directory; expected a YAML file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(path, "", f"not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(path, "", f"cannot read: {err.strerror}") from None
    try:
        data = _load_bounded(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(path, where, f"invalid YAML: {reason}") from None
    if data is None:
        raise ConfigError(path, "", "empty file; expected a YAML mapping")
    if not isinstance(data, dict):
        raise ConfigError(path, "", f"expected a YAML mapping at the top, got {type(data).__name__}")
    return data


MAX_YAML_NODES = 100_000


def _load_bounded(text: str) -> Any:
    """Safe-load YAML, refusing documents whose aliases would expand past MAX_YAML_NODES ("billion laughs")."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}

        def expanded(current: yaml.Node) -> int:  # size as if every alias were copied, memoized per node
            if id(current) not in sizes:
                sizes[id(current)] = 1  # guards recursive aliases
                if isinstance(current, yaml.SequenceNode):
                    sizes[id(current)] += sum(expanded(child) for child in current.value)
                elif isinstance(current, yaml.MappingNode):
                    _no_duplicate_keys(current)
                    sizes[id(current)] += sum(expanded(k) + expanded(v) for k, v in current.value)
            return sizes[id(current)]

        if expanded(node) > MAX_YAML_NODES:
            raise yaml.YAMLError(f"its aliases expand to more than {MAX_YAML_NODES:,} values; refusing to load it")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _no_duplicate_keys(mapping: yaml.MappingNode) -> None:
    """A key given twice is an error, not 'the last one wins' (PyYAML's default drops the first silently)."""
    seen: set[str] = set()
    for key, _ in mapping.value:
        if isinstance(key, yaml.ScalarNode) and key.value != "<<":
            if key.value in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key.value}'", key.start_mark)
            seen.add(key.value)


def parse(model: type[BaseModel], data: dict[str, Any], *, path: str | Path, section: str = "") -> Any:
    """Validate data against a model, turning the first problem into a one-line ConfigError.

    The one translator of pydantic errors: study and space files, and the CLI's `--set` (path '--set').
    `section` prefixes the key where the data sits inside a larger file (e.g. 'training.overrides.').
    """
    try:
        return model.model_validate(data)
    except ValidationError as err:
        error = _config_error(model, err, path)
        raise ConfigError(path, section + error.key, error.message) from None


_UNION_TAG = re.compile(r"^(str|int|float|bool|none|(list|dict|tuple)\[.*\]|function-\w+\[.*\]|[A-Z]\w*)$")


def _config_error(model: type[BaseModel], err: ValidationError, path: str | Path) -> ConfigError:
    # a union reports one error per branch, tagged in loc: keep the deepest, drop the tags
    errors = [
        {**e, "loc": tuple(p for p in e["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p)))}
        for e in err.errors()
    ]
    first = max(errors, key=lambda e: len(e["loc"]))
    loc = first["loc"]
    key = _dotted(loc)
    if first["type"] == "extra_forbidden":
        return ConfigError(path, key, unknown_key(loc[-1], _fields_at(model, loc[:-1])))
    ctx = first.get("ctx", {})
    cause = ctx.get("error") if isinstance(ctx, dict) else None
    if isinstance(cause, UnknownKey):
        return ConfigError(path, _dotted((*loc, cause.name)), unknown_key(cause.name, cause.allowed))
    if isinstance(cause, AtKey):
        return ConfigError(path, f"{key}.{cause.key}", str(cause))
    message = str(cause) if cause is not None else first["msg"]
    if isinstance(cause, SecretValue):
        return ConfigError(path, key, message)
    if "input" in first and first["type"] not in ("missing",) and not isinstance(first["input"], dict):
        message = f"got {first['input']!r}; {message[0].lower()}{message[1:]}"
    return ConfigError(path, key, message)


def unknown_key(name: object, allowed: typing.Iterable[str]) -> str:
    allowed = list(allowed)
    close = difflib.get_close_matches(str(name), allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown key '{name}'{hint} (allowed: {', '.join(allowed)})"


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model reached by following loc (through lists, dicts and unions)."""
    current: Any = model
    for part in loc:
        if isinstance(part, str) and _is_model(current) and part in current.model_fields:
            current = current.model_fields[part].annotation
        current = _unwrap(current)
    return list(current.model_fields) if _is_model(current) else []


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _unwrap(annotation: Any) -> Any:
    """The model inside list[X], dict[str, X], X | None."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (list, dict, typing.Union, types.UnionType):
        models = [a for a in args if _is_model(a)]
        return models[0] if models else annotation
    return annotation

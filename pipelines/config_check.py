"""The whole run config checked before ZenML runs anything, so a bad key is one line,
``<config file>: <dotted key>: <problem>``, with a "did you mean" for a misspelt key.

Checked: the YAML itself, ZenML's top-level keys, every pipeline parameter against its pydantic
type (nested keys, registry names, required keys), the pipeline's own cross-checks (the sets a
setting names), and ``steps:``: names of the pipeline's steps and ZenML's step options.
"""

from __future__ import annotations

import inspect
import re
import sys
import typing
from pathlib import Path
from types import UnionType
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from cxr.errors import ConfigError, did_you_mean


def load_config(path: str) -> dict:
    """The YAML mapping in ``path``; a missing file, bad YAML or a non-mapping is a ConfigError."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError("-", "no such config file", path)
    try:
        config = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "-"
        raise ConfigError(where, f"not valid YAML: {getattr(error, 'problem', None) or error}", path) from None
    if not isinstance(config, dict):
        raise ConfigError("-", "expected a mapping of keys (parameters:, steps:, ...)", path)
    return config


def check_keys(prefix: str, given: dict, known: list[str]) -> None:
    """Raise for the first key of ``given`` not in ``known``, suggesting the closest one."""
    for key in given:
        if key not in known:
            raise ConfigError(f"{prefix}{key}", f"unknown key{did_you_mean(key, known)}")


def _unwrap(annotation: Any) -> Any:
    """The model or container inside Optional[...] / Annotated[...]."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = next((m for m in members if _is_model(_unwrap(m))), members[0])
        else:
            return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _fields_at(annotation: Any, loc: tuple) -> list[str]:
    """The field names of the model that ``loc`` (a pydantic error location) points into."""
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(part, int):
            annotation = (typing.get_args(annotation) or (Any,))[-1]
        elif _is_model(annotation) and part in annotation.model_fields:
            annotation = annotation.model_fields[part].annotation
        else:
            return []
    annotation = _unwrap(annotation)
    return list(annotation.model_fields) if _is_model(annotation) else []


def dotted(prefix: str, loc: tuple) -> str:
    """``train.augment.gamma`` / ``external[0].name`` from a pydantic location."""
    return prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def describe(error: dict, annotation: Any) -> str:
    """One pydantic error as a short problem, never echoing more than a short scalar input."""
    if error["type"] == "extra_forbidden":
        return f"unknown key{did_you_mean(error['loc'][-1], _fields_at(annotation, error['loc'][:-1]))}"
    if error["type"] == "missing":
        return "missing (required)"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    shown = isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 40
    shown = shown and repr(value) not in message
    return f"{message[:1].lower()}{message[1:]}" + (f" (got {value!r})" if shown else "")


def validate_value(key: str, annotation: Any, value: Any) -> None:
    """Raise a ConfigError naming the dotted key of the first problem of ``value`` as ``annotation``."""
    try:
        TypeAdapter(annotation).validate_python(value)
    except ValidationError as error:
        first = error.errors()[0]
        loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p[:1].isupper()))
        raise ConfigError(dotted(key, loc), describe(first, annotation)) from None


def nested_home(key: str, hints: dict) -> str:
    """`` (did you mean 'train.epochs'?)`` when ``key`` is a field of one parameter's model, else ''."""
    homes = [f"{name}.{key}" for name, annotation in hints.items() if key in _fields_at(annotation, ())]
    return f" (did you mean {homes[0]!r}?)" if homes else ""


def check_parameters(pipeline, parameters: dict) -> None:
    """Every parameter known to ``pipeline``, required ones given, each valid for its type."""
    hints = typing.get_type_hints(pipeline.entrypoint, include_extras=True)
    hints.pop("return", None)
    signature = inspect.signature(pipeline.entrypoint).parameters
    for key in parameters:
        if key not in signature:
            hint = nested_home(key, hints) or did_you_mean(key, signature)
            raise ConfigError(f"parameters.{key}", f"unknown key{hint}")
    for name, parameter in signature.items():
        if parameter.default is parameter.empty and name not in parameters:
            raise ConfigError(f"parameters.{name}", "missing (required)")
    for name, value in parameters.items():
        validate_value(f"parameters.{name}", hints.get(name, Any), value)


def possible_steps(pipeline) -> set[str]:
    """Every step id ``pipeline`` can have under some parameters: its steps' names and the literal
    ``id="..."`` it gives invocations, so that options for a step this run switched off still pass."""
    from zenml.steps import BaseStep

    module = sys.modules[pipeline.entrypoint.__module__]
    names = {value.name for value in vars(module).values() if isinstance(value, BaseStep)}
    return names | set(re.findall(r'\bid="(\w+)"', inspect.getsource(module)))


def check_steps(pipeline, parameters: dict, steps: dict) -> None:
    """Compile the pipeline's step graph (no step runs) with ``parameters``, which raises its
    cross-checks; then every ``steps:`` key is one of its steps, with ZenML's step options."""
    from zenml.config.step_configurations import StepConfigurationUpdate

    prepared = pipeline.with_options()
    prepared.prepare(**parameters)
    check_keys("steps.", steps, sorted(set(prepared.invocations) | possible_steps(pipeline)))
    for name, options in steps.items():
        if not isinstance(options, dict):
            raise ConfigError(f"steps.{name}", "expected a mapping of step options (settings:, parameters:, ...)")
        check_keys(f"steps.{name}.", options, list(StepConfigurationUpdate.model_fields))
        validate_value(f"steps.{name}", StepConfigurationUpdate, options)
        if name in prepared.invocations:
            signature = inspect.signature(prepared.invocations[name].step.entrypoint).parameters
            check_keys(f"steps.{name}.parameters.", options.get("parameters") or {}, list(signature))


def check_top_level(config: dict) -> None:
    """ZenML's run-configuration keys only, each of its type."""
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    fields = PipelineRunConfiguration.model_fields
    check_keys("", config, list(fields))
    for key, value in config.items():
        if key not in ("parameters", "steps"):
            validate_value(key, fields[key].annotation, value)


def check_config(pipeline, path: str) -> dict:
    """The config at ``path`` for ``pipeline``, checked whole; raises ConfigError naming the file and key."""
    config = load_config(path)
    try:
        check_top_level(config)
        parameters = config.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ConfigError("parameters", "expected a mapping of pipeline parameters")
        check_parameters(pipeline, parameters)
        check_steps(pipeline, parameters, config.get("steps") or {})
    except ConfigError as error:
        raise error.in_file(path) from None
    return config

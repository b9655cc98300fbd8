"""What the HTTP API accepts, declared once: the request bodies and queries.

The handlers check every request against these models before doing anything, and
docs/api.md documents them from here (:func:`markdown`; a test keeps the two equal). The
bodies are strict: JSON types must be the declared ones, with no conversion (``1.5`` or
``true`` is not an integer, ``{"emd": 1}`` is not a list of targets), unknown fields are
refused, a field given twice is refused, and sizes are bounded so that nothing accepted
overflows later. What depends on the run (the rank of EMD chunks, whether the frames fill a
line of the scan) is checked by the conversion's plan before a job is recorded
(:func:`stemcast.convert.run.check_conversion`).

Run ``python -m stemcast.service.control.requests docs/api.md`` to write the generated part
of the documentation again.
"""

from __future__ import annotations

import json
import re
import sys
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from stemcast.service.state.records import JobStatus, RunStatus

__all__ = [
    "MAX_AXIS",
    "MAX_BODY_BYTES",
    "MAX_LIMIT",
    "BlockfileOptions",
    "ConversionOptions",
    "ConvertPathBody",
    "ConvertRunBody",
    "EmdOptions",
    "JobsQuery",
    "RequestError",
    "RunsQuery",
    "generated_part",
    "markdown",
    "parse_body",
    "parse_query",
    "write_docs",
]

#: The largest request body read, in bytes (a conversion request takes a few hundred).
MAX_BODY_BYTES = 64 * 1024
#: The largest scan axis or chunk size: what a C int holds.
MAX_AXIS = 2**31 - 1
#: The largest ``limit`` of a listing.
MAX_LIMIT = 1_000_000
#: The longest path, in characters (Linux's ``PATH_MAX``).
MAX_PATH = 4096
#: Characters of a refused value repeated in an error message.
_SHOWN = 60

_Model = TypeVar("_Model", bound=BaseModel)


class RequestError(ValueError):
    """A request that does not match its model; the message says every problem found."""


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict, str, bool, type(None))) else None
    if text is None:
        text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _one_error(expected: str) -> WrapValidator:
    """Report any mismatch of a field as one error saying what it expects.

    Fields whose type is a union would otherwise report one error per alternative.
    """

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            context = {"expected": expected, "got": _shown(value)}
            message = "expected {expected}, got {got}"
            raise PydanticCustomError("expected", message, context) from None

    return WrapValidator(validate)


def _count(value: Any) -> Any:
    """Read a query's count: ASCII digits only (no sign, space, ``_``, exponent...)."""
    if isinstance(value, str) and not re.fullmatch(r"[0-9]{1,18}", value):
        raise PydanticCustomError(
            "count",
            "expected a count of at most {most} (digits 0-9), got {got}",
            {"most": MAX_LIMIT, "got": _shown(value)},
        )
    return int(value) if isinstance(value, str) else value


Axis = Annotated[int, Field(ge=1, le=MAX_AXIS)]
FiniteNumber = Annotated[float, Field(allow_inf_nan=False)]
TargetNames = Annotated[
    str | list[str],
    _one_error('"emd,blockfile" or a list of target names such as ["emd"]'),
]
Scaling = Annotated[
    # A list, not a tuple: a wrapped validator sees Python values, and strict mode takes
    # only tuples for tuples there.
    Literal["auto", "dtype", "minmax", "crop"]
    | Annotated[list[FiniteNumber], Field(min_length=2, max_length=2)]
    | None,
    _one_error('null, "auto", "dtype", "minmax", "crop" or [low, high] (finite numbers)'),
]
Limit = Annotated[int, Field(ge=0, le=MAX_LIMIT), BeforeValidator(_count)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class EmdOptions(_Strict):
    """Options of the ``emd`` target (HDF5)."""

    chunks: Annotated[list[Axis], Field(min_length=1, max_length=4)] | None = Field(
        default=None,
        description="Chunk shape in array order, navigation axes first, e.g. "
        "`[1, 64, 256, 256]`: one size per axis of the data, none larger than its axis, "
        "less than 4 GiB per chunk. `null`: whole patterns, small ones grouped to about 1 MiB.",
    )
    compression: Literal["gzip", "lzf"] | None = Field(
        default=None, description="Compression filter; `null`: none."
    )
    compression_opts: Annotated[int, Field(ge=0, le=9)] | None = Field(
        default=None, description="gzip level (only with gzip); `null`: 4 with gzip."
    )
    shuffle: bool = Field(
        default=False, description="Byte shuffle before compressing (only with a compression)."
    )


class BlockfileOptions(_Strict):
    """Options of the ``blockfile`` target (NanoMegas ``.blo``)."""

    intensity_scaling: Scaling = Field(
        default="auto",
        description='How counts become 8 bits: `"auto"` (`"minmax"` for sources wider than '
        '8 bits, `null` for 8-bit ones), `null` (cast: values above 255 wrap), `"dtype"` '
        "(the dtype's range to 0-255), `\"minmax\"` (the data's range, one extra pass over "
        'the run), `"crop"` (clip to 0-255), `[low, high]`.',
    )
    endianess: Literal["<", ">"] = Field(default="<", description="Byte order.")
    endianness: Literal["<", ">"] = Field(
        default="<",
        description="Byte order, as spelled by RosettaSciIO 0.13+; must agree with `endianess`.",
    )


class ConversionOptions(_Strict):
    """Options per target; only for requested targets."""

    emd: EmdOptions = Field(default_factory=EmdOptions, description="See `options.emd`.")
    blockfile: BlockfileOptions = Field(
        default_factory=BlockfileOptions, description="See `options.blockfile`."
    )


class ConvertRunBody(_Strict):
    """Body of ``POST /runs/{id}/convert`` (may be empty)."""

    targets: TargetNames | None = Field(
        default=None,
        description="Output formats: `emd`, `blockfile`. `null`: the run's configured "
        "conversion (its rule's targets, else `convert`).",
    )
    options: ConversionOptions | None = Field(
        default=None,
        description="Options per target (see below). `null`: the configured options of the "
        "targets (the run's rule's, else `convert_options`).",
    )
    navigation_shape: tuple[Axis, Axis] | None = Field(
        default=None,
        description="Scan shape `[x, y]` to write; the frames must fill its first line. "
        "`null`: the run's (the one the service found, else inferred from its files).",
    )


class ConvertPathBody(ConvertRunBody):
    """Body of ``POST /convert``."""

    path: Annotated[str, Field(min_length=1, max_length=MAX_PATH)] = Field(
        description="A file of the run: absolute, or relative to a watch folder or input root."
    )


class RunsQuery(BaseModel):
    """Query of ``GET /runs``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: RunStatus | None = Field(default=None, description="Only runs in this state.")
    limit: Limit | None = Field(default=None, description="At most this many runs.")


class JobsQuery(BaseModel):
    """Query of ``GET /jobs``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: JobStatus | None = Field(default=None, description="Only jobs in this state.")
    run_id: Annotated[str, Field(max_length=200)] | None = Field(
        default=None, description="Only jobs of this run."
    )
    limit: Limit | None = Field(default=None, description="At most this many jobs.")


def parse_body(raw: bytes, model: type[_Model]) -> _Model:
    """Check a request body against its model.

    Parameters
    ----------
    raw
        The body as received; empty (or blank) means ``{}``.
    model
        The body's model.

    Returns
    -------
    BaseModel
        The body.

    Raises
    ------
    RequestError
        Saying every problem: not JSON (or nested too deeply), not an object, unknown or
        repeated fields, values of the wrong type or out of bounds.
    """
    try:
        body = model.model_validate_json(raw if raw.strip() else b"{}")
    except ValidationError as error:
        raise RequestError(_describe(error, model)) from None
    # The model accepted it, so it nests a few levels at most: safe for the json module.
    json.loads(raw or b"{}", object_pairs_hook=_refuse_repeated)
    return body


def parse_query(
    query: Mapping[str, str], items: list[tuple[str, str]], model: type[_Model]
) -> _Model:
    """Check a query string against its model.

    Parameters
    ----------
    query
        The query's parameters.
    items
        Every ``(name, value)`` pair of the query, repeated names included.
    model
        The query's model.

    Returns
    -------
    BaseModel
        The query.

    Raises
    ------
    RequestError
        For unknown or repeated parameters and values that are not what the model says.
    """
    names = [name for name, _ in items]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise RequestError(f"{', '.join(repeated)}: given more than once")
    try:
        return model.model_validate(dict(query))
    except ValidationError as error:
        raise RequestError(_describe(error, model)) from None


def _refuse_repeated(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise RequestError(f"{', '.join(repeated)}: given more than once")
    return dict(pairs)


def _describe(error: ValidationError, model: type[BaseModel]) -> str:
    """One message naming each problem of a request: ``where: what``, joined by ``; ``."""
    problems = []
    for item in error.errors(include_url=False):
        where = ".".join(map(_field_name, item["loc"]))
        kind = item["type"]
        if kind == "json_invalid":
            reason = item.get("ctx", {}).get("error", item["msg"])
            problems.append(f"the body is not JSON: {reason}")
        elif kind in ("model_type", "model_attributes_type") and not where:
            problems.append("the body must be a JSON object")
        elif kind == "extra_forbidden":
            known = _fields_at(model, item["loc"][:-1])
            problems.append(f"{where}: unknown field; expected {', '.join(known)}")
        elif kind == "missing":
            problems.append(f"{where}: required")
        elif kind in ("expected", "count"):
            problems.append(f"{where}: {item['msg']}")
        else:
            message = item["msg"][:1].lower() + item["msg"][1:]
            problems.append(f"{where}: {message}, got {_shown(item['input'])}")
    return "; ".join(problems)


def _field_name(part: int | str) -> str:
    """Write a part of a field's location for a message: quoted unless a plain name."""
    text = str(part)
    return text if re.fullmatch(r"[A-Za-z0-9_]+", text) else json.dumps(text)


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Return the fields of the model at ``loc`` in ``model`` (for an unknown-field error)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        nested = None if field is None else _model_in(field.annotation)
        if nested is None:
            return []
        model = nested
    return sorted(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


# ------------------------------------------------------------------------------------------
# Documentation
# ------------------------------------------------------------------------------------------

_START = "<!-- request models: generated by python -m stemcast.service.control.requests -->"
_END = "<!-- end of the generated request models -->"
#: The models documented, with their headings.
_DOCUMENTED: tuple[tuple[str, type[BaseModel]], ...] = (
    ("`POST /runs/{id}/convert`", ConvertRunBody),
    ("`POST /convert`", ConvertPathBody),
    ("`options.emd`", EmdOptions),
    ("`options.blockfile`", BlockfileOptions),
    ("`GET /runs` query", RunsQuery),
    ("`GET /jobs` query", JobsQuery),
)


def markdown() -> str:
    """Return the documentation of the request models, as docs/api.md holds it.

    Returns
    -------
    str
        A Markdown table per body and query: each field, its JSON type, its default and
        what it means, between the markers that :func:`write_docs` replaces.
    """
    sections = [_START, ""]
    for heading, model in _DOCUMENTED:
        summary = (model.__doc__ or "").strip().replace("``", "`")
        sections += [f"### {heading}", "", summary, ""]
        sections += ["| field | type | default | meaning |", "|---|---|---|---|"]
        schema = model.model_json_schema()
        definitions = schema.get("$defs", {})
        for name, field in model.model_fields.items():
            kind = _type(schema["properties"][name], definitions)
            default = "required" if field.is_required() else f"`{_default(field)}`"
            meaning = (field.description or "").replace("|", "\\|")
            sections.append(f"| `{name}` | {kind} | {default} | {meaning} |")
        sections.append("")
    sections.append(_END)
    return "\n".join(sections)


def write_docs(path: str | Path) -> bool:
    """Replace the generated part of a Markdown file by :func:`markdown`.

    Parameters
    ----------
    path
        The file (docs/api.md), holding the two markers.

    Returns
    -------
    bool
        Whether the file changed.
    """
    file = Path(path)
    text = file.read_text()
    start, end = text.index(_START), text.index(_END) + len(_END)
    updated = text[:start] + markdown() + text[end:]
    file.write_text(updated)
    return updated != text


def generated_part(text: str) -> str:
    """Return the generated part of a Markdown text (for the test that compares it).

    Parameters
    ----------
    text
        The text of docs/api.md.

    Returns
    -------
    str
        From the start marker to the end marker, both included.
    """
    return text[text.index(_START) : text.index(_END) + len(_END)]


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "{}" if isinstance(value, BaseModel) else json.dumps(value)
    value = field.default
    return json.dumps(value.value if isinstance(value, (RunStatus, JobStatus)) else value)


def _type(schema: Mapping[str, Any], definitions: Mapping[str, Any]) -> str:
    """Say a JSON schema's type in a few words."""
    if "$ref" in schema:
        target = definitions[schema["$ref"].rsplit("/", 1)[-1]]
        return "object" if target.get("type") == "object" else _type(target, definitions)
    if "anyOf" in schema:
        return " or ".join(dict.fromkeys(_type(option, definitions) for option in schema["anyOf"]))
    if "enum" in schema:
        return ", ".join(f"`{json.dumps(value)}`" for value in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type")
    words: dict[str, Callable[[], str]] = {
        "integer": lambda: _bounded("integer", schema),
        "number": lambda: "number",
        "boolean": lambda: "`true`, `false`",
        "null": lambda: "`null`",
        "string": lambda: (
            "string"
            + (f" (at most {schema['maxLength']} characters)" if "maxLength" in schema else "")
        ),
        "array": lambda: _array(schema, definitions),
        "object": lambda: "object",
    }
    return words[str(kind)]()


def _bounded(kind: str, schema: Mapping[str, Any]) -> str:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is None and high is None:
        return kind
    if high is None:
        return f"{kind} ≥ {low}"
    return f"{kind} {low}-{high}"


def _array(schema: Mapping[str, Any], definitions: Mapping[str, Any]) -> str:
    if "prefixItems" in schema:
        return "[" + ", ".join(_type(item, definitions) for item in schema["prefixItems"]) + "]"
    items = _type(schema.get("items", {}), definitions) if schema.get("items") else "values"
    low, high = schema.get("minItems"), schema.get("maxItems")
    if low is not None and low == high:
        return "[" + ", ".join([items] * low) + "]"
    counted = f" ({low}-{high} items)" if low is not None and high is not None else ""
    return f"array of {items}{counted}"


def _main(arguments: list[str]) -> int:
    if len(arguments) != 1:
        print(markdown())
        return 0
    changed = write_docs(arguments[0])
    print(f"{arguments[0]}: {'updated' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

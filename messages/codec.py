"""Encode messages to ZeroMQ frames and decode them back, validating everything (no pickle, ever).

Wire format (see docs/PROTOCOL.md): frame 0 is a msgpack map
``{"v": PROTOCOL_VERSION, "type": name, "body": {field: value}, "arrays": [[field, dtype, shape], ...]}``;
each numpy field travels as one raw frame after it, in the order of ``arrays``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import numpy as np

from messages import commands, events
from messages.base import Message

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
"""Largest header frame accepted."""
DEFAULT_MAX_MESSAGE_BYTES = 256 << 20
"""Largest message (all frames together) accepted unless the caller sets a lower limit."""
MAX_ARRAY_DIMS = 4
ALLOWED_DTYPES = frozenset({"<f4", "<f8", "<i8", "<i4", "|i1", "|u1", "|b1"})

Frame = bytes | bytearray | memoryview


class DecodeError(ValueError):
    """Frames that are not a valid message of this protocol; the text names what was wrong.

    When the header decoded far enough, `msg_id` is the message's id, so a server can answer it with a
    RequestFailed that correlates ("" when it could not be read).
    """

    def __init__(self, text: str, *, msg_id: str = "") -> None:
        super().__init__(text)
        self.msg_id = msg_id


def _shown(value: Any, limit: int = 64) -> str:
    """Repr of a received value, cut so a hostile peer cannot make error lines huge."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


Validator = Callable[[Any, str], Any]


def _fail(path: str, expected: str, value: Any) -> typing.NoReturn:
    raise DecodeError(f"field {path}: expected {expected}, got {type(value).__name__}")


def _check_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, "int", value)
    return value


def _check_float(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(path, "float", value)
    return float(value)


def _check_str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        _fail(path, "str", value)
    return value


def _check_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        _fail(path, "bool", value)
    return value


def _check_any(value: Any, path: str, depth: int = 0) -> Any:
    """Accept JSON-like data (what msgpack produces without extensions), bounded in depth."""
    if depth > 16:
        raise DecodeError(f"field {path}: nested deeper than 16 levels")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_check_any(v, f"{path}[]", depth + 1) for v in value]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise DecodeError(f"field {path}: map key of type {type(key).__name__}, expected str")
        return {k: _check_any(v, f"{path}.{k}", depth + 1) for k, v in value.items()}
    _fail(path, "JSON-like data", value)


def _validator_for(hint: Any) -> Validator:
    """Build the checker of one annotated field type (the subset of types messages may use)."""
    simple: dict[Any, Validator] = {
        int: _check_int,
        float: _check_float,
        str: _check_str,
        bool: _check_bool,
        Any: _check_any,
    }
    if hint in simple:
        return simple[hint]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _validator_for(args[0])

        def check_tuple(value: Any, path: str) -> tuple[Any, ...]:
            if not isinstance(value, list | tuple):
                _fail(path, "array", value)
            return tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value))

        return check_tuple
    if origin is dict and args and args[0] is str:
        item = _validator_for(args[1])

        def check_dict(value: Any, path: str) -> dict[str, Any]:
            if not isinstance(value, dict):
                _fail(path, "map", value)
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise DecodeError(f"field {path}: map key of type {type(k).__name__}, expected str")
                out[k] = item(v, f"{path}.{k}")
            return out

        return check_dict
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        inner = _validator_for(rest[0])
        return lambda value, path: None if value is None else inner(value, path)
    raise TypeError(f"message field type {hint!r} is not supported by the codec")


@dataclasses.dataclass(frozen=True, slots=True)
class _Schema:
    cls: type[Message]
    plain: dict[str, Validator]
    arrays: frozenset[str]
    required: frozenset[str]


def _schema(cls: type[Message]) -> _Schema:
    hints = typing.get_type_hints(cls)
    plain: dict[str, Validator] = {}
    arrays: set[str] = set()
    required: set[str] = set()
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if hint is np.ndarray:
            arrays.add(f.name)
        else:
            plain[f.name] = _validator_for(hint)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.add(f.name)
    return _Schema(cls, plain, frozenset(arrays), frozenset(required))


def _collect(*modules: types.ModuleType) -> dict[str, _Schema]:
    registry: dict[str, _Schema] = {}
    for module in modules:
        for name, obj in vars(module).items():
            if isinstance(obj, type) and issubclass(obj, Message) and obj is not Message:
                if obj.__module__ != module.__name__ or name.startswith("_"):
                    continue
                if name in registry:
                    raise TypeError(f"message type {name} registered twice")
                registry[name] = _schema(obj)
    return registry


REGISTRY: dict[str, _Schema] = _collect(commands, events)
"""Every message type the protocol knows, by wire name (the class name)."""


def message_types() -> dict[str, type[Message]]:
    """Return the registered message classes by wire name."""
    return {name: schema.cls for name, schema in REGISTRY.items()}


def _to_wire(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot encode value of type {type(value).__name__}")


def encode(msg: Message) -> list[Frame]:
    """Encode a message as a header frame followed by one raw frame per array field."""
    name = type(msg).__name__
    schema = REGISTRY.get(name)
    if schema is None or schema.cls is not type(msg):
        raise TypeError(f"message type {name} is not registered")
    body: dict[str, Any] = {}
    specs: list[list[Any]] = []
    frames: list[Frame] = []
    for field_name in schema.plain:
        body[field_name] = getattr(msg, field_name)
    for field_name in schema.arrays:
        arr = np.asarray(getattr(msg, field_name))
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        dtype = arr.dtype.str
        if dtype not in ALLOWED_DTYPES:
            raise TypeError(f"field {field_name}: dtype {dtype} cannot travel on the wire")
        specs.append([field_name, dtype, list(arr.shape)])
        frames.append(memoryview(arr.reshape(-1)).cast("B") if arr.size else b"")  # type: ignore[arg-type]
    header = msgpack.packb(
        {"v": PROTOCOL_VERSION, "type": name, "body": body, "arrays": specs},
        default=_to_wire,
        use_bin_type=True,
    )
    return [header, *frames]


def _unpack_header(frame: Frame) -> dict[str, Any]:
    if len(frame) > MAX_HEADER_BYTES:
        raise DecodeError(f"header of {len(frame)} bytes exceeds the limit of {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_HEADER_BYTES,
            max_bin_len=0,
            max_ext_len=0,
            max_array_len=1 << 16,
            max_map_len=1 << 12,
        )
    except Exception as exc:  # msgpack raises many types for bad input
        raise DecodeError(f"header is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise DecodeError(f"header is a {type(header).__name__}, expected a map")
    return header


def _decode_array(spec: Any, frame: Frame, schema: _Schema) -> tuple[str, np.ndarray]:
    if not (isinstance(spec, list) and len(spec) == 3):
        raise DecodeError("array spec must be [field, dtype, shape]")
    field_name, dtype, shape = spec
    if not isinstance(field_name, str) or not isinstance(dtype, str):
        raise DecodeError("array spec field and dtype must be strings")
    if field_name not in schema.arrays:
        raise DecodeError(f"{schema.cls.__name__} has no array field {_shown(field_name)}")
    if dtype not in ALLOWED_DTYPES:
        raise DecodeError(f"field {field_name}: dtype {_shown(dtype)} is not allowed")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_ARRAY_DIMS
        or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 40 for n in shape)
    ):
        raise DecodeError(f"field {field_name}: bad shape {_shown(shape)}")
    itemsize = np.dtype(dtype).itemsize
    expected = math.prod(shape) * itemsize
    if expected != len(frame):
        raise DecodeError(f"field {field_name}: shape {shape} needs {expected} bytes, frame has {len(frame)}")
    return field_name, np.frombuffer(frame, dtype=dtype).reshape(shape)


def decode(frames: Sequence[Frame], *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Decode and validate frames into a message; raise DecodeError naming what was wrong."""
    if not frames:
        raise DecodeError("no frames")
    views = [memoryview(f).cast("B") if not isinstance(f, bytes) else f for f in frames]
    total = sum(len(v) for v in views)
    if total > max_bytes:
        raise DecodeError(f"message of {total} bytes exceeds the limit of {max_bytes}")
    header = _unpack_header(views[0])
    if set(header) != {"v", "type", "body", "arrays"}:
        raise DecodeError(f"header keys {sorted(map(str, header))} != ['arrays', 'body', 'type', 'v']")
    if type(header["v"]) is not int or header["v"] != PROTOCOL_VERSION:
        raise DecodeError(f"protocol version {_shown(header['v'])}, expected {PROTOCOL_VERSION}")
    name = header["type"]
    schema = REGISTRY.get(name) if isinstance(name, str) else None
    if schema is None:
        raise DecodeError(f"unknown message type {_shown(name)}")
    body, specs = header["body"], header["arrays"]
    if not isinstance(body, dict):
        raise DecodeError(f"{name}: body is not a map")
    msg_id = body.get("msg_id")
    try:
        return _decode_body(schema, body, specs, views)
    except DecodeError as exc:
        exc.msg_id = msg_id if isinstance(msg_id, str) and len(msg_id) <= 64 else ""
        raise


def _decode_body(schema: _Schema, body: dict[str, Any], specs: Any, views: Sequence[Frame]) -> Message:
    name = schema.cls.__name__
    if not isinstance(specs, list) or len(specs) != len(views) - 1:
        raise DecodeError(f"{name}: {len(views) - 1} array frames but the header describes a different count")
    values: dict[str, Any] = {}
    for key, value in body.items():
        validator = schema.plain.get(key)
        if validator is None:
            raise DecodeError(f"{name}: unknown field {_shown(key)}")
        values[key] = validator(value, f"{name}.{key}")
    for spec, frame in zip(specs, views[1:], strict=True):
        field_name, arr = _decode_array(spec, frame, schema)
        if field_name in values:
            raise DecodeError(f"{name}: field {field_name!r} given twice")
        values[field_name] = arr
    missing = schema.required - values.keys()
    if missing:
        raise DecodeError(f"{name}: missing field(s) {', '.join(sorted(missing))}")
    try:
        return schema.cls(**values)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"{name}: {exc}") from None


def to_json_dict(msg: Message) -> dict[str, Any]:
    """Return a JSON-safe dict of a message (arrays as lists of numbers), with its type under "type"."""
    out: dict[str, Any] = {"type": type(msg).__name__}
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out

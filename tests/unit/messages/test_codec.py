"""Test the codec: every registered message round-trips, and every malformed input is a DecodeError."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import pickle
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from messages import DataBlock, EnvsReset, Ping, codec
from messages.base import Message
from messages.codec import (
    ALLOWED_DTYPES,
    MAX_ARRAY_DIMS,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    REGISTRY,
    DecodeError,
    decode,
    encode,
    message_types,
    to_json_dict,
)

ROOT = Path(__file__).resolve().parents[3]
MESSAGE_NAMES = sorted(REGISTRY)
ARRAY_MESSAGE_NAMES = [name for name in MESSAGE_NAMES if REGISTRY[name].arrays]
DTYPES = sorted(ALLOWED_DTYPES)


# Building valid messages from the registry, so that a new message type is covered without editing this file.


def sample_array(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Return an array of this dtype and shape with varied values (NaN, inf and -0.0 for floats)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt)
    arr = rng.standard_normal(size=shape).astype(dt)
    flat = arr.reshape(-1)
    for i, special in enumerate((np.nan, np.inf, -np.inf, -0.0)):
        if i < flat.size:
            flat[i] = special
    return arr


def sample_value(hint: Any, name: str, index: int) -> Any:
    """Return a valid value of an annotated message field type, distinct per field index."""
    if hint is np.ndarray:
        # Cycle through dtypes and shapes across fields, so every array-bearing type mixes them.
        shapes = [(2, 3), (4,), (0,), (1, 2, 2), (0, 3), (2, 1, 1, 2)]
        return sample_array(DTYPES[index % len(DTYPES)], shapes[index % len(shapes)], seed=index)
    if hint is bool:
        return index % 2 == 0
    if hint is int:
        return 100 + index
    if hint is float:
        return 0.25 + index
    if hint is str:
        return f"{name}-{index}"
    if hint is Any:
        return {
            "int": index,
            "float": 1.5,
            "text": "é ü ✓",
            "flag": False,
            "none": None,
            "list": [1, "two", [3.0, None]],
            "map": {"nested": {"deeper": []}},
        }
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return tuple(sample_value(args[0], name, index + k) for k in range(3))
    if origin is dict:
        return {f"k{k}": sample_value(args[1], name, index + k) for k in range(2)}
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        return sample_value(next(a for a in args if a is not type(None)), name, index)
    raise TypeError(f"no sample value for field {name} of type {hint!r}: teach sample_value about it")


def sample_message(cls: type[Message]) -> Message:
    """Build an instance of a message type with every field (base fields included) set to a valid value."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    return cls(**{f.name: sample_value(hints[f.name], f.name, i) for i, f in enumerate(fields)})


def minimal_message(cls: type[Message]) -> Message:
    """Build an instance of a message type with only its required fields set."""
    hints = typing.get_type_hints(cls)
    required = [
        f
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    return cls(**{f.name: sample_value(hints[f.name], f.name, i) for i, f in enumerate(required)})


def to_wire(msg: Message) -> list[bytes]:
    """Encode a message and copy its frames, as they would arrive from a socket."""
    return [bytes(frame) for frame in encode(msg)]


def assert_same_message(decoded: Message, original: Message) -> None:
    """Assert two messages have the same type and equal fields (arrays by dtype, shape and values)."""
    assert type(decoded) is type(original)
    for f in dataclasses.fields(original):
        got, want = getattr(decoded, f.name), getattr(original, f.name)
        if isinstance(want, np.ndarray):
            assert isinstance(got, np.ndarray), f.name
            assert got.dtype == want.dtype, f.name
            assert got.shape == want.shape, f.name
            np.testing.assert_array_equal(got, want, err_msg=f.name)
        else:
            assert type(got) is type(want), f.name
            assert got == want, f.name


# Round trips.


def test_the_registry_holds_every_message_class_under_its_class_name() -> None:
    classes = message_types()

    assert classes, "no message types registered"
    assert set(classes) == set(REGISTRY)
    for name, cls in classes.items():
        assert cls.__name__ == name
        assert issubclass(cls, Message)
    assert not [name for name in classes if name.startswith("_")], "shared bases are not wire types"
    assert {"EvaluationComputed", "EvaluationReport"} <= set(classes)


@pytest.mark.parametrize("name", MESSAGE_NAMES)
def test_every_message_type_is_a_frozen_slotted_keyword_only_dataclass(name: str) -> None:
    cls = message_types()[name]
    msg = sample_message(cls)

    assert hasattr(cls, "__slots__")
    assert all(f.kw_only for f in dataclasses.fields(cls))
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.sender = "someone else"  # type: ignore[misc]


@pytest.mark.parametrize("name", MESSAGE_NAMES)
def test_every_message_type_round_trips_with_every_field_set(name: str) -> None:
    original = sample_message(message_types()[name])

    decoded = decode(to_wire(original))

    assert_same_message(decoded, original)


@pytest.mark.parametrize("name", MESSAGE_NAMES)
def test_every_message_type_round_trips_with_only_its_required_fields(name: str) -> None:
    original = minimal_message(message_types()[name])

    decoded = decode(to_wire(original))

    assert_same_message(decoded, original)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (5,), (0, 3), (3, 0), (2, 3), (2, 1, 3), (1, 2, 2, 2)])
def test_arrays_of_every_allowed_dtype_and_shape_round_trip(dtype: str, shape: tuple[int, ...]) -> None:
    for name in ARRAY_MESSAGE_NAMES:
        cls = message_types()[name]
        base = minimal_message(cls)
        arrays = {f: sample_array(dtype, shape, seed=i) for i, f in enumerate(sorted(REGISTRY[name].arrays))}
        original = dataclasses.replace(base, **arrays)  # type: ignore[arg-type]

        decoded = decode(to_wire(original))

        assert_same_message(decoded, original)


def test_a_two_dimensional_float32_block_travels_as_one_raw_frame() -> None:
    features = np.arange(24, dtype=np.float32).reshape(6, 4) / 7
    block = DataBlock(split="train", offset=0, total_rows=6, features=features)

    frames = encode(block)
    decoded = decode(to_wire(block))

    header = msgpack.unpackb(frames[0])
    assert ["features", "<f4", [6, 4]] in header["arrays"]
    assert features.tobytes() in [bytes(f) for f in frames[1:]]
    assert decoded.features.dtype == np.float32  # type: ignore[attr-defined]
    np.testing.assert_array_equal(decoded.features, features)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.arange(12, dtype="<f4").reshape(3, 4).T,
        lambda: np.arange(24, dtype="<i8").reshape(4, 6)[:, ::2],
        lambda: np.asfortranarray(np.arange(6, dtype="<f8").reshape(2, 3)),
    ],
    ids=["transposed", "strided", "fortran"],
)
def test_non_contiguous_arrays_arrive_with_the_same_values_in_c_order(make: Callable[[], np.ndarray]) -> None:
    arr = make()
    original = EnvsReset(obs=arr)

    decoded = decode(to_wire(original))

    np.testing.assert_array_equal(decoded.obs, arr)  # type: ignore[attr-defined]
    assert decoded.obs.shape == arr.shape  # type: ignore[attr-defined]


def test_a_zero_dimensional_array_keeps_its_shape() -> None:
    original = EnvsReset(obs=np.array(2.5, dtype="<f8"))

    decoded = decode(to_wire(original))

    assert decoded.obs.shape == ()  # type: ignore[attr-defined]


@pytest.mark.parametrize("dtype", [">f4", "<u2", "<f2", "<c16", "O", "<U3", "<M8[ns]"])
def test_encoding_an_array_of_a_dtype_outside_the_protocol_raises_type_error(dtype: str) -> None:
    msg = EnvsReset(obs=np.zeros(2, dtype=dtype))

    with pytest.raises(TypeError, match="cannot travel on the wire"):
        encode(msg)


def test_encoding_an_unregistered_message_subclass_raises_type_error() -> None:
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class NotOnTheWire(Message):
        value: int = 0

    with pytest.raises(TypeError, match="NotOnTheWire is not registered"):
        encode(NotOnTheWire())


def test_encoding_a_subclass_that_shadows_a_registered_name_raises_type_error() -> None:
    registered = Ping
    shadow = type("Ping", (registered,), {"__slots__": ()})

    with pytest.raises(TypeError, match="Ping is not registered"):
        encode(shadow())


@pytest.mark.parametrize("name", MESSAGE_NAMES)
def test_to_json_dict_is_json_serialisable_for_every_message_type(name: str) -> None:
    msg = sample_message(message_types()[name])

    out = json.loads(json.dumps(to_json_dict(msg)))

    assert out["type"] == name
    assert set(out) == {"type"} | {f.name for f in dataclasses.fields(msg)}
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(
                np.array(out[f.name], dtype=value.dtype).reshape(value.shape), value
            )
        elif isinstance(value, tuple):
            assert out[f.name] == list(value)
        else:
            assert out[f.name] == value


# Rejections: each names what was wrong.


def header_frame(**changes: Any) -> bytes:
    """Return a header frame of a valid TrainEpisode with some entries changed (or removed with None)."""
    header: dict[Any, Any] = {
        "v": PROTOCOL_VERSION,
        "type": "TrainEpisode",
        "body": {"episode": 1, "steps": 128, "sender": "test"},
        "arrays": [],
    }
    for key, value in changes.items():
        if value is None:
            header.pop(key)
        else:
            header[key] = value
    return msgpack.packb(header, use_bin_type=True)


def raw_header(header: Any) -> bytes:
    """Pack any value as a header frame, non-string map keys allowed."""
    return msgpack.packb(header, use_bin_type=True, strict_types=False)


def array_frames(type_name: str, body: dict[str, Any], specs: list[Any], frames: list[bytes]) -> list[bytes]:
    """Return the frames of a message with hand-written array specs and raw frames."""
    header = {"v": PROTOCOL_VERSION, "type": type_name, "body": body, "arrays": specs}
    return [msgpack.packb(header, use_bin_type=True), *frames]


def assert_rejected(frames: Sequence[Any], *fragments: str, max_bytes: int | None = None) -> None:
    """Assert decode raises DecodeError whose text holds every fragment."""
    with pytest.raises(DecodeError) as info:
        if max_bytes is None:
            decode(frames)
        else:
            decode(frames, max_bytes=max_bytes)
    text = str(info.value)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"


def test_no_frames_are_rejected() -> None:
    assert_rejected([], "no frames")


def test_truncated_msgpack_is_rejected() -> None:
    header = to_wire(sample_message(message_types()["TrainEpisode"]))[0]

    assert_rejected([header[: len(header) // 2]], "not valid msgpack")


def test_trailing_bytes_after_the_header_are_rejected() -> None:
    assert_rejected([header_frame() + b"\x00"], "not valid msgpack")


@pytest.mark.parametrize(
    ("header", "kind"), [([1, 2], "list"), (5, "int"), ("TrainEpisode", "str"), (None, "NoneType")]
)
def test_a_header_that_is_not_a_map_is_rejected(header: Any, kind: str) -> None:
    assert_rejected([raw_header(header)], f"header is a {kind}, expected a map")


@pytest.mark.parametrize("missing", ["v", "type", "body", "arrays"])
def test_a_header_missing_a_key_is_rejected(missing: str) -> None:
    present = sorted({"v", "type", "body", "arrays"} - {missing})

    assert_rejected([header_frame(**{missing: None})], "header keys", str(present))


def test_a_header_with_an_extra_key_is_rejected() -> None:
    assert_rejected([header_frame(extra=1)], "header keys", "'extra'")


@pytest.mark.parametrize("version", [0, 2, PROTOCOL_VERSION + 1, "1", -1])
def test_a_wrong_protocol_version_is_rejected(version: Any) -> None:
    assert_rejected(
        [header_frame(v=version)], "protocol version", repr(version), f"expected {PROTOCOL_VERSION}"
    )


@pytest.mark.parametrize("version", [True, 1.0])
def test_a_protocol_version_that_only_compares_equal_to_the_integer_is_rejected(version: Any) -> None:
    assert_rejected([header_frame(v=version)], "protocol version")


@pytest.mark.parametrize("type_name", ["LaunchMissiles", "Message", "trainepisode", 7, ["Ping"]])
def test_an_unknown_message_type_is_rejected(type_name: Any) -> None:
    assert_rejected([header_frame(type=type_name)], "unknown message type", repr(type_name))


def test_an_unknown_field_is_rejected() -> None:
    body = {"episode": 1, "steps": 128, "bogus": 1}

    assert_rejected([header_frame(body=body)], "TrainEpisode", "unknown field 'bogus'")


def test_an_array_field_sent_in_the_body_is_rejected() -> None:
    frames = array_frames("EnvsReset", {"obs": [1.0, 2.0]}, [], [])

    assert_rejected(frames, "EnvsReset", "unknown field 'obs'")


def test_a_missing_required_field_is_rejected() -> None:
    assert_rejected([header_frame(body={"episode": 1})], "TrainEpisode", "missing field(s) steps")


def test_a_missing_required_array_field_is_rejected() -> None:
    frames = array_frames("StepEnvs", {"role": "train"}, [], [])

    assert_rejected(frames, "StepEnvs", "missing field(s) actions")


def test_a_body_that_is_not_a_map_is_rejected() -> None:
    assert_rejected([header_frame(body=[1, 128])], "TrainEpisode", "body is not a map")


@pytest.mark.parametrize(
    ("type_name", "body", "fragments"),
    [
        ("TrainEpisode", {"episode": "1", "steps": 1}, ["TrainEpisode.episode", "expected int, got str"]),
        ("TrainEpisode", {"episode": True, "steps": 1}, ["TrainEpisode.episode", "expected int, got bool"]),
        ("TrainEpisode", {"episode": 1.0, "steps": 1}, ["TrainEpisode.episode", "expected int, got float"]),
        (
            "TrainEpisode",
            {"episode": None, "steps": 1},
            ["TrainEpisode.episode", "expected int, got NoneType"],
        ),
        ("Stop", {"reason": 1.5}, ["Stop.reason", "expected str, got float"]),
        ("Stop", {"sender": ["a"]}, ["Stop.sender", "expected str, got list"]),
        ("Stop", {"ts": "now"}, ["Stop.ts", "expected float, got str"]),
        ("Stop", {"ts": False}, ["Stop.ts", "expected float, got bool"]),
        (
            "ErrorRaised",
            {"where": "w", "error": "e", "fatal": 1},
            ["ErrorRaised.fatal", "expected bool, got int"],
        ),
        (
            "EnvsCreated",
            {"n_envs": 1, "obs_shape": "32", "action": "discrete3"},
            ["EnvsCreated.obs_shape", "expected array, got str"],
        ),
        (
            "EnvsCreated",
            {"n_envs": 1, "obs_shape": [32, "8"], "action": "discrete3"},
            ["EnvsCreated.obs_shape[1]", "expected int, got str"],
        ),
        (
            "TrainingMetrics",
            {"model_id": "m", "episode": 1, "total_steps": 1, "values": [1.0]},
            ["TrainingMetrics.values", "expected map, got list"],
        ),
        (
            "TrainingMetrics",
            {"model_id": "m", "episode": 1, "total_steps": 1, "values": {"loss": "high"}},
            ["TrainingMetrics.values.loss", "expected float, got str"],
        ),
    ],
)
def test_a_field_of_the_wrong_type_is_rejected(
    type_name: str, body: dict[str, Any], fragments: list[str]
) -> None:
    assert_rejected([header_frame(type=type_name, body=body)], *fragments)


@pytest.mark.parametrize(
    ("type_name", "body"),
    [
        ("TrainingMetrics", {"model_id": "m", "episode": 1, "total_steps": 1, "values": {1: 0.5}}),
        ("Snapshot", {"seq": 1, "state": {"actors": {2: {}}}}),
        ("TrainEpisode", {1: 1, "episode": 1, "steps": 1}),
    ],
    ids=["typed-map", "any-map", "body"],
)
def test_a_map_with_integer_keys_is_rejected(type_name: str, body: dict[Any, Any]) -> None:
    header = {"v": PROTOCOL_VERSION, "type": type_name, "body": body, "arrays": []}

    assert_rejected([raw_header(header)], "map key")


@pytest.mark.parametrize(
    ("type_name", "body", "field_path"),
    [
        (
            "TrainingMetrics",
            {"model_id": "m", "episode": 1, "total_steps": 1, "values": {b"": 0.5}},
            "values",
        ),
        ("Snapshot", {"seq": 1, "state": {"a": {b"": 1}}}, "state.a"),
    ],
)
def test_a_map_with_binary_keys_is_rejected(type_name: str, body: dict[Any, Any], field_path: str) -> None:
    header = {"v": PROTOCOL_VERSION, "type": type_name, "body": body, "arrays": []}

    assert_rejected([raw_header(header)], f"{type_name}.{field_path}", "map key of type bytes, expected str")


def test_binary_values_in_the_header_are_rejected() -> None:
    assert_rejected([header_frame(body={"episode": 1, "steps": 1, "sender": b"bytes"})], "not valid msgpack")


def test_msgpack_extension_types_are_rejected() -> None:
    body = {"episode": 1, "steps": 1, "sender": msgpack.ExtType(1, b"x")}

    assert_rejected([header_frame(body=body)], "not valid msgpack")


def test_free_form_data_nested_too_deep_is_rejected() -> None:
    state: dict[str, Any] = {}
    for _ in range(20):
        state = {"a": state}

    assert_rejected([header_frame(type="Snapshot", body={"seq": 1, "state": state})], "nested deeper than 16")


def obs_frames(spec: Any, frame: bytes = b"\x00" * 8) -> list[bytes]:
    """Return the frames of an EnvsReset whose one array spec is `spec`."""
    return array_frames("EnvsReset", {}, [spec], [frame])


@pytest.mark.parametrize(("n_specs", "n_frames"), [(1, 0), (0, 1), (1, 2), (2, 1)])
def test_an_array_spec_count_that_differs_from_the_frame_count_is_rejected(
    n_specs: int, n_frames: int
) -> None:
    specs = [["obs", "<f4", [2]]] * n_specs
    frames = array_frames("EnvsReset", {}, specs, [b"\x00" * 8] * n_frames)

    assert_rejected(frames, "EnvsReset", f"{n_frames} array frames", "different count")


@pytest.mark.parametrize("dtype", ["|O", "<c16", ">f4", "<f2", "float32", "<U8", "V8", ""])
def test_an_array_of_a_dtype_outside_the_protocol_is_rejected(dtype: Any) -> None:
    assert_rejected(obs_frames(["obs", dtype, [2]]), "field obs", f"dtype {dtype!r} is not allowed")


@pytest.mark.parametrize(("shape", "frame_len"), [([3], 8), ([2], 12), ([0], 4), ([2, 2], 12), ([], 0)])
def test_an_array_whose_shape_and_frame_length_disagree_is_rejected(shape: list[int], frame_len: int) -> None:
    expected = int(np.prod(shape)) * 4

    assert_rejected(
        obs_frames(["obs", "<f4", shape], b"\x00" * frame_len),
        "field obs",
        f"needs {expected} bytes, frame has {frame_len}",
    )


def test_an_array_with_too_many_dimensions_is_rejected() -> None:
    shape = [1] * (MAX_ARRAY_DIMS + 1)

    assert_rejected(obs_frames(["obs", "<f4", shape], b"\x00" * 4), "field obs", "bad shape")


@pytest.mark.parametrize("shape", [[-1], [2, -4], [1.5], [True], ["2"], "2", None, [1 << 40]])
def test_an_array_with_a_negative_or_non_integer_dimension_is_rejected(shape: Any) -> None:
    assert_rejected(obs_frames(["obs", "<f4", shape]), "field obs", f"bad shape {shape!r}")


@pytest.mark.parametrize("shape", [[2**39], [2**39, 2**39], [2**20, 2**20, 2**20, 2**20]])
def test_a_huge_array_header_with_a_small_frame_is_rejected_without_allocating(shape: list[int]) -> None:
    assert_rejected(obs_frames(["obs", "<f8", shape], b"\x00" * 16), "field obs", "frame has 16")


@pytest.mark.parametrize("spec", ["obs", ["obs", "<f4"], ["obs", "<f4", [2], "extra"], {"obs": "<f4"}])
def test_a_malformed_array_spec_is_rejected(spec: Any) -> None:
    assert_rejected(obs_frames(spec), "array spec must be [field, dtype, shape]")


@pytest.mark.parametrize("field_name", ["nope", "role", ""])
def test_an_array_spec_for_a_field_that_is_not_an_array_is_rejected(field_name: Any) -> None:
    frames = array_frames("StepEnvs", {"role": "train"}, [[field_name, "<f4", [2]]], [b"\x00" * 8])

    assert_rejected(frames, "StepEnvs has no array field", repr(field_name))


def test_an_array_given_twice_is_rejected() -> None:
    spec = ["obs", "<f4", [2]]
    frames = array_frames("EnvsReset", {}, [spec, spec], [b"\x00" * 8, b"\x00" * 8])

    assert_rejected(frames, "EnvsReset", "'obs' given twice")


@pytest.mark.parametrize(
    "spec", [["obs", ["<f4"], [2]], [["obs"], "<f4", [2]], ["obs", {"d": 1}, [2]], [3, "<f4", [2]]]
)
def test_an_array_spec_whose_field_or_dtype_is_not_a_string_is_rejected(spec: Any) -> None:
    assert_rejected(obs_frames(spec), "array spec field and dtype must be strings")


def test_a_message_larger_than_max_bytes_is_rejected() -> None:
    msg = EnvsReset(obs=np.zeros(1000, dtype=np.float32))
    frames = to_wire(msg)
    total = sum(len(f) for f in frames)

    assert isinstance(decode(frames, max_bytes=total), Message)
    assert_rejected(frames, f"message of {total} bytes exceeds the limit of {total - 1}", max_bytes=total - 1)


def test_a_header_larger_than_the_header_limit_is_rejected_before_parsing() -> None:
    frame = header_frame(body={"episode": 1, "steps": 1, "sender": "x" * MAX_HEADER_BYTES})

    assert_rejected([frame], f"header of {len(frame)} bytes exceeds the limit of {MAX_HEADER_BYTES}")


# Random input: decode raises DecodeError and nothing else.


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_decode_error_only(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode([data])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=256), max_size=6))
def test_random_frame_lists_raise_decode_error_only(frames: list[bytes]) -> None:
    with pytest.raises(DecodeError):
        decode(frames)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def plausible_frames(draw: st.DrawFn) -> list[bytes]:
    """Draw frames of a registered type whose fields and arrays are mostly valid, sometimes random."""
    name = draw(st.sampled_from(MESSAGE_NAMES))
    schema = REGISTRY[name]
    hints = typing.get_type_hints(schema.cls)
    body: dict[str, Any] = {}
    for i, key in enumerate(sorted(schema.plain)):
        choice = draw(st.sampled_from(["valid", "valid", "valid", "random", "omit"]))
        if choice == "valid":
            body[key] = sample_value(hints[key], key, i)
        elif choice == "random":
            body[key] = draw(json_like)
    body.update(draw(st.dictionaries(st.text(max_size=6), json_like, max_size=1)))
    specs: list[Any] = []
    frames: list[bytes] = []
    for i, key in enumerate(sorted(schema.arrays)):
        choice = draw(st.sampled_from(["valid", "valid", "random", "omit"]))
        if choice == "valid":
            shape = tuple(draw(st.lists(st.integers(0, 3), max_size=MAX_ARRAY_DIMS)))
            arr = sample_array(draw(st.sampled_from(DTYPES)), shape, seed=i)
            specs.append([key, arr.dtype.str, list(arr.shape)])
            frames.append(arr.tobytes())
        elif choice == "random":
            shape_items = st.integers(-2, 6) | json_like
            specs.append(
                [key, draw(st.sampled_from(DTYPES) | json_like), draw(st.lists(shape_items, max_size=5))]
            )
            frames.append(draw(st.binary(max_size=64)))
    for _ in range(draw(st.integers(0, 1))):
        specs.append(draw(st.lists(json_like, min_size=3, max_size=3) | json_like))
        frames.append(draw(st.binary(max_size=16)))
    order = draw(st.permutations(range(len(specs))))
    specs, frames = [specs[i] for i in order], [frames[i] for i in order]
    frames = frames[: draw(st.sampled_from([len(frames), len(frames), max(0, len(frames) - 1)]))]
    header = {"v": PROTOCOL_VERSION, "type": name, "body": body, "arrays": specs}
    return [msgpack.packb(header, use_bin_type=True), *frames]


@settings(max_examples=500, deadline=None)
@given(plausible_frames())
def test_plausible_but_random_messages_decode_or_raise_decode_error_only(frames: list[bytes]) -> None:
    header = msgpack.unpackb(frames[0])
    try:
        msg = decode(frames)
    except DecodeError:
        return
    assert type(msg).__name__ == header["type"]


# No pickle, ever.

_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "jsonpickle"}
_PICKLING_CALLS = {"send_pyobj", "recv_pyobj"}
SOCKET_MODULES = ("transport.py", "event_hub.py", "keys.py")
WIRE_MODULES = [
    *sorted((ROOT / "messages").glob("*.py")),
    *sorted(p for p in (ROOT / "services").glob("*.py") if p.name in SOCKET_MODULES),
]


def pickle_uses(source: str) -> list[str]:
    """Return the pickle imports and pyobj socket calls found in Python source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in _PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _PICKLE_MODULES:
            found.append(node.module or "")
        elif isinstance(node, ast.Attribute) and node.attr in _PICKLING_CALLS:
            found.append(node.attr)
    return found


def test_the_checker_finds_pickle_in_source_that_uses_it() -> None:
    source = "import pickle\nfrom cloudpickle import dumps\nsock.recv_pyobj()\n"

    assert pickle_uses(source) == ["pickle", "cloudpickle", "recv_pyobj"]


def test_the_codec_module_does_not_import_pickle() -> None:
    assert pickle_uses(inspect.getsource(codec)) == []


@pytest.mark.parametrize("path", WIRE_MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_module_on_the_wire_path_uses_pickle(path: Path) -> None:
    assert pickle_uses(path.read_text(encoding="utf-8")) == []


_UNPICKLED: list[str] = []


def _record_unpickling(what: str) -> None:
    _UNPICKLED.append(what)


class _Trap:
    """An object whose unpickling would record that it ran (pickled by reference to _record_unpickling)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_record_unpickling, ("unpickled",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_pickle_payload_is_rejected_and_never_unpickled(protocol: int) -> None:
    payloads = [pickle.dumps(_Trap(), protocol=protocol), pickle.dumps({"type": "Ping"}, protocol=protocol)]

    for payload in payloads:
        with pytest.raises(DecodeError):
            decode([payload])
        with pytest.raises(DecodeError):
            decode([header_frame(), payload])

    assert _UNPICKLED == []


def test_a_pickle_payload_in_an_array_frame_stays_inert_bytes() -> None:
    payload = pickle.dumps(_Trap())
    frames = array_frames("EnvsReset", {}, [["obs", "|u1", [len(payload)]]], [payload])

    msg = decode(frames)

    assert msg.obs.tobytes() == payload  # type: ignore[attr-defined]
    assert _UNPICKLED == []

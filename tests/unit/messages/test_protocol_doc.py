"""Keep docs/PROTOCOL.md's message table in step with the registry; run as a script to print the table.

Regenerate the doc's table with:
    .venv/bin/python tests/unit/messages/test_protocol_doc.py --write
or print it with no argument.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from messages import codec  # noqa: E402
from messages.base import Message  # noqa: E402
from messages.codec import REGISTRY  # noqa: E402

DOC = ROOT / "docs" / "PROTOCOL.md"
BEGIN = "<!-- messages:begin -->"
END = "<!-- messages:end -->"
EVERY_ACTOR = "any actor"
HUB = "hub → subscribers"

# Who sends each message to whom, the one fact the registry cannot tell: add every new message type here.
ROUTES: dict[str, tuple[str, str]] = {
    "PrepareEpisode": ("command", "session → data"),
    "EpisodeDataReady": ("reply", "data → session"),
    "DataBlock": ("command", "data → env"),
    "BlockAccepted": ("reply", "env → data"),
    "DataComplete": ("command", "data → env"),
    "DataInstalled": ("reply", "env → data"),
    "SetSession": ("command", "session → env"),
    "SessionSet": ("reply", "env → session"),
    "DescribeEnvs": ("command", "model → env"),
    "EnvSpec": ("reply", "env → model"),
    "ResetEnvs": ("command", "model → env"),
    "EnvsReset": ("reply", "env → model"),
    "StepEnvs": ("command", "model → env"),
    "EnvsStepped": ("reply", "env → model"),
    "FinishEvaluation": ("command", "model → env"),
    "EvaluationComputed": ("reply", "env → model"),
    "TrainEpisode": ("command", "session → model"),
    "EpisodeTrained": ("reply", "model → session"),
    "EvaluateEpisode": ("command", "session → model"),
    "EvaluationReport": ("reply", "model → session"),
    "Stop": ("command", "session → any actor"),
    "Stopped": ("reply", "any actor → session"),
    "Ping": ("command", "any client → any actor"),
    "Pong": ("reply", "any actor → its client"),
    "RequestFailed": ("reply", "any server → its client"),
    "DescribeSession": ("command", "monitor → session socket"),
    "SessionDescription": ("reply", "session socket → monitor"),
    "RequestSnapshot": ("command", "monitor → session socket"),
    "Snapshot": ("reply", "session socket → monitor"),
    "SessionStarted": ("event", f"session → {HUB}"),
    "SessionFinished": ("event", f"session → {HUB}"),
    "ActorStarted": ("event", f"{EVERY_ACTOR} → {HUB}"),
    "ActorStopped": ("event", f"{EVERY_ACTOR} → {HUB}"),
    "ActorRestarted": ("event", f"session → {HUB}"),
    "Heartbeat": ("event", f"{EVERY_ACTOR} → {HUB}"),
    "DataLoaded": ("event", f"data → {HUB}"),
    "EnvsCreated": ("event", f"env → {HUB}"),
    "DataSwapped": ("event", f"env → {HUB}"),
    "ModelCreated": ("event", f"model → {HUB}"),
    "CheckpointWritten": ("event", f"model → {HUB}"),
    "ModelReused": ("event", f"model → {HUB}"),
    "EpisodeStarted": ("event", f"session → {HUB}"),
    "TrainingProgress": ("event", f"model → {HUB}"),
    "TrainingMetrics": ("event", f"model → {HUB}"),
    "EpisodeFinished": ("event", f"model → {HUB}"),
    "EvaluationFinished": ("event", f"model → {HUB}"),
    "ErrorRaised": ("event", f"{EVERY_ACTOR} → {HUB}"),
}
BASE_FIELDS = {f.name for f in dataclasses.fields(Message)}


def type_text(hint: Any) -> str:
    """Return the wire type of an annotated field, as the doc writes it."""
    names = {int: "int", float: "float", str: "str", bool: "bool", Any: "any", np.ndarray: "ndarray"}
    if hint in names:
        return names[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return f"[{type_text(args[0])}]"
    if origin is dict:
        return f"{{str: {type_text(args[1])}}}"
    if origin in (typing.Union, types.UnionType):
        return " | ".join("nil" if a is type(None) else type_text(a) for a in args)
    raise TypeError(f"no doc spelling for {hint!r}")


def field_text(field: dataclasses.Field[Any], hint: Any) -> str:
    """Return `name: type`, with `= default` for an optional field."""
    text = f"{field.name}: {type_text(hint)}"
    if field.default is not dataclasses.MISSING:
        default = field.default
        shown = (
            '""' if default == "" else str(default).lower() if isinstance(default, bool) else repr(default)
        )
        text += f" = {shown}"
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        text += " = empty" if not len(value) else f" = {value!r}"
    return f"`{text}`"


def render_table() -> str:
    """Return the markdown table of every registered message type, in registry order."""
    lines = [
        "| type | kind | from → to | fields (besides the base fields) | purpose |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, schema in REGISTRY.items():
        kind, route = ROUTES[name]
        hints = typing.get_type_hints(schema.cls)
        fields = [
            field_text(f, hints[f.name]) for f in dataclasses.fields(schema.cls) if f.name not in BASE_FIELDS
        ]
        purpose = (schema.cls.__doc__ or "").strip().splitlines()[0].replace("|", "\\|")
        cells = ", ".join(fields).replace("|", "\\|") or "—"
        lines.append(f"| `{name}` | {kind} | {route} | {cells} | {purpose} |")
    return "\n".join(lines) + "\n"


def doc_table(text: str) -> str:
    """Return the part of the doc between the message markers."""
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"{DOC} must hold {BEGIN} and {END} once each"
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def test_every_registered_message_type_has_a_route_and_no_route_is_stale() -> None:
    missing = sorted(set(REGISTRY) - set(ROUTES))
    stale = sorted(set(ROUTES) - set(REGISTRY))

    assert not missing, f"add {missing} to ROUTES in {Path(__file__).name}, then regenerate docs/PROTOCOL.md"
    assert not stale, f"remove {stale} from ROUTES in {Path(__file__).name}"


def test_the_message_table_in_the_protocol_doc_is_up_to_date() -> None:
    documented = doc_table(DOC.read_text(encoding="utf-8"))

    assert documented == render_table(), (
        "docs/PROTOCOL.md is out of date with the registry: run "
        ".venv/bin/python tests/unit/messages/test_protocol_doc.py --write"
    )


def test_the_table_names_every_field_of_every_message() -> None:
    table = render_table()

    for name, schema in REGISTRY.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        for field in dataclasses.fields(schema.cls):
            if field.name not in BASE_FIELDS:
                assert f"`{field.name}: " in row, f"{name}.{field.name}"


def test_the_protocol_doc_states_the_codec_constants() -> None:
    text = DOC.read_text(encoding="utf-8")

    assert f"version {codec.PROTOCOL_VERSION}" in text
    assert f"{codec.MAX_HEADER_BYTES:,} bytes" in text
    assert f"at most {codec.MAX_ARRAY_DIMS} dimensions" in text
    for dtype in codec.ALLOWED_DTYPES:
        assert f"`{dtype}`" in text, dtype
    for field in BASE_FIELDS:
        assert f"`{field}`" in text, field


def main(argv: list[str]) -> int:
    """Print the message table, or with --write replace it in docs/PROTOCOL.md."""
    table = render_table()
    if argv == ["--write"]:
        text = DOC.read_text(encoding="utf-8")
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        DOC.write_text(f"{head}{BEGIN}\n{table}{END}{tail}", encoding="utf-8")
        return 0
    if argv:
        sys.stderr.write("usage: test_protocol_doc.py [--write]\n")
        return 2
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

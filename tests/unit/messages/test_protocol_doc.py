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
from messages.base import Command, Event, Message, Reply  # noqa: E402
from messages.codec import REGISTRY  # noqa: E402

DOC = ROOT / "docs" / "PROTOCOL.md"
BEGIN = "<!-- messages:begin -->"
END = "<!-- messages:end -->"
EVERY_ACTOR = "any actor"
HUB = "hub → subscribers"

# Who sends each message to whom, the one fact the registry cannot tell: add every new message type here.
# (Its kind, command, reply or event, is the class's role base.)
ROUTES: dict[str, str] = {
    "PrepareEpisode": "session → data",
    "EpisodeDataReady": "data → session",
    "DataBlock": "data → env",
    "BlockAccepted": "env → data",
    "DataComplete": "data → env",
    "DataInstalled": "env → data",
    "SetSession": "session → env",
    "SessionSet": "env → session",
    "DescribeEnvs": "model → env",
    "EnvSpec": "env → model",
    "ResetEnvs": "model → env",
    "EnvsReset": "env → model",
    "StepEnvs": "model → env",
    "EnvsStepped": "env → model",
    "AttachShared": "model → env",
    "SharedAttached": "env → model",
    "StepShared": "model → env",
    "SharedStepped": "env → model",
    "FinishEvaluation": "model → env",
    "EvaluationComputed": "env → model",
    "TrainEpisode": "session → model",
    "EpisodeTrained": "model → session",
    "EvaluateEpisode": "session → model",
    "EvaluationReport": "model → session",
    "Stop": "session → any actor",
    "Stopped": "any actor → session",
    "Ping": "any client → any actor",
    "Pong": "any actor → its client",
    "RequestFailed": "any server → its client",
    "DescribeSession": "monitor → session socket",
    "SessionDescription": "session socket → monitor",
    "RequestSnapshot": "monitor → session socket",
    "Snapshot": "session socket → monitor",
    "SessionStarted": f"session → {HUB}",
    "SessionFinished": f"session → {HUB}",
    "ActorStarted": f"{EVERY_ACTOR} → {HUB}",
    "ActorStopped": f"{EVERY_ACTOR} → {HUB}",
    "ActorRestarted": f"session → {HUB}",
    "Heartbeat": f"{EVERY_ACTOR} → {HUB}",
    "DataLoaded": f"data → {HUB}",
    "EnvsCreated": f"env → {HUB}",
    "DataSwapped": f"env → {HUB}",
    "ModelCreated": f"model → {HUB}",
    "CheckpointWritten": f"model → {HUB}",
    "ModelReused": f"model → {HUB}",
    "StudyStarted": f"study → {HUB}",
    "TrialStarted": f"study → {HUB}",
    "SeedStarted": f"study → {HUB}",
    "TrialProgressed": f"study → {HUB}",
    "TrialReported": f"study → {HUB}",
    "TrialCompleted": f"study → {HUB}",
    "TrialPruned": f"study → {HUB}",
    "TrialFailed": f"study → {HUB}",
    "StudyFinished": f"study → {HUB}",
    "EpisodeStarted": f"session → {HUB}",
    "TrainingProgress": f"model → {HUB}",
    "TrainingMetrics": f"model → {HUB}",
    "EpisodeFinished": f"model → {HUB}",
    "EvaluationFinished": f"model → {HUB}",
    "ErrorRaised": f"{EVERY_ACTOR} → {HUB}",
}
BASE_FIELDS = {f.name for f in dataclasses.fields(Message)}
KINDS: dict[type[Message], str] = {Command: "command", Reply: "reply", Event: "event"}


def kind_of(cls: type[Message]) -> str:
    """Return whether a message type is a command, a reply or an event, from its role base."""
    kinds = [kind for role, kind in KINDS.items() if issubclass(cls, role)]
    assert len(kinds) == 1, f"{cls.__name__} must derive from exactly one of Command, Reply and Event"
    return kinds[0]


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
        kind, route = kind_of(schema.cls), ROUTES[name]
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

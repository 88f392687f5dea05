"""The README's example console output has the form the console prints now (bench/readme_example.py)."""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import pytest

from bench.readme_example import README, example_block, read_block, replace_block
from messages import (
    DataLoaded,
    EpisodeFinished,
    EvaluationFinished,
    Message,
    ModelCreated,
    SessionStarted,
    TrainingProgress,
)
from services.session.console import PlainView
from services.session.state import SessionState

NUMBER = r"[\d,]+"
PERCENT = r"[+-]?\d+\.\d+"


def number(text: str) -> int:
    return int(text.replace(",", ""))


def seconds(text: str) -> float:
    hours, minutes, secs = (int(part) for part in text.split(":"))
    return 3600.0 * hours + 60.0 * minutes + secs


def data_events(m: re.Match[str]) -> list[Message]:
    return [
        DataLoaded(
            source="data.csv",
            rows=number(m["rows"]),
            features=tuple(f"f{i}" for i in range(int(m["features"]))),
            bars_per_year=252.0,
            data_hash="h",
            cached=bool(m["cached"]),
            seconds=0.1,
        )
    ]


def model_events(m: re.Match[str]) -> list[Message]:
    return [
        ModelCreated(
            model_id=m["id"],
            algorithm=m["algorithm"],
            device=m["device"],
            parameters=number(m["parameters"]),
            episode=1,
        )
    ]


def progress_events(m: re.Match[str]) -> list[Message]:
    start = SessionStarted(
        name="s", run_dir="r", monitor="m", episodes=int(m["episodes"]), steps_per_episode=1, config={}
    )
    progress = TrainingProgress(
        model_id="m",
        episode=int(m["episode"]),
        steps=number(m["steps"]),
        steps_total=number(m["total"]),
        total_steps=number(m["steps"]),
        steps_per_s=float(number(m["rate"])),
        eta_s=seconds(m["eta"]),
    )
    return [start, progress]


def trained_events(m: re.Match[str]) -> list[Message]:
    steps = number(m["steps"])
    return [
        EpisodeFinished(
            model_id="m",
            episode=int(m["episode"]),
            steps=steps,
            total_steps=steps,
            seconds=seconds(m["time"]),
            steps_per_s=float(number(m["rate"])),
        )
    ]


def evaluated_events(m: re.Match[str]) -> list[Message]:
    def side(ret: str, sharpe: str) -> dict[str, float]:
        return {"total_return": float(ret) / 100.0, "sharpe": float(sharpe)}

    return [
        EvaluationFinished(
            model_id="m",
            episode=int(m["episode"]),
            agent=side(m["ret"], m["sharpe"]),
            buy_and_hold=side(m["bret"], m["bsharpe"]),
        )
    ]


CONSOLE_LINES: tuple[tuple[str, Callable[[re.Match[str]], list[Message]]], ...] = (
    (rf"data: (?P<rows>{NUMBER}) bars, (?P<features>\d+) features(?P<cached>, from cache)?", data_events),
    (
        rf"model (?P<id>\w+) created \((?P<algorithm>\w+), (?P<device>[\w:]+),"
        rf" (?P<parameters>{NUMBER}) parameters\)",
        model_events,
    ),
    (
        rf"episode (?P<episode>\d+)/(?P<episodes>\d+)  (?P<steps>{NUMBER})/(?P<total>{NUMBER}) steps \(\d+%\)"
        rf"  (?P<rate>{NUMBER}) steps/s  ETA (?P<eta>\d+:\d\d:\d\d)",
        progress_events,
    ),
    (
        rf"episode (?P<episode>\d+) trained: (?P<steps>{NUMBER}) steps in (?P<time>\d+:\d\d:\d\d)"
        rf" \((?P<rate>{NUMBER}) steps/s\)",
        trained_events,
    ),
    (
        rf"episode (?P<episode>\d+) evaluated: agent (?P<ret>{PERCENT})% \(Sharpe (?P<sharpe>-?\d+\.\d+)\),"
        rf" buy & hold (?P<bret>{PERCENT})% \(Sharpe (?P<bsharpe>-?\d+\.\d+)\)",
        evaluated_events,
    ),
)
"""Each console line of the example, and the events whose numbers it shows."""
LAUNCHER_LINES = (r"session [\w.-]+: run folder \S+", r"monitor: \S*python\S* run\.py monitor .+")
"""Lines the launcher prints itself, before the console view starts."""


def rendered(events: list[Message]) -> str:
    """Return the last line a fresh plain console view prints for the events."""
    out, state = io.StringIO(), SessionState()
    view = PlainView(out, tables=False)
    for seq, msg in enumerate(events, start=1):
        state.apply(seq, msg)
        view.event(state, seq, msg)
    return out.getvalue().splitlines()[-1]


def test_every_line_of_the_readme_example_is_printed_as_the_console_prints_it_now() -> None:
    lines = read_block(README.read_text())

    assert lines[-1] == "..." and len(lines) >= 6
    for line in lines[:-1]:
        if any(re.fullmatch(pattern, line) for pattern in LAUNCHER_LINES):
            continue
        parsed = [(m, events) for pattern, events in CONSOLE_LINES if (m := re.fullmatch(pattern, line))]
        assert parsed, f"README example line not in a form the console prints: {line!r}"
        match, events = parsed[0]
        assert rendered(events(match)) == line


def test_the_example_shows_a_whole_default_session_up_to_its_evaluation() -> None:
    lines = read_block(README.read_text())

    assert lines[0].startswith("session readme-demo: run folder ")
    assert any(line.startswith("data: 2,335 bars, 4 features") for line in lines)
    assert any(" created (ppo, " in line for line in lines)
    assert re.fullmatch(r"episode 1 trained: 503,808 steps in .+", lines[-3])
    assert lines[-2].startswith("episode 1 evaluated: agent ")


def test_the_block_is_replaced_between_its_markers_and_nothing_else_changes() -> None:
    readme = README.read_text()
    output = "session s: run folder /x\ndata: 1 bars, 1 features\nepisode 1 evaluated: agent ...\nsummary\n"

    new = replace_block(readme, example_block(output))

    assert read_block(new) == [
        "session s: run folder /x",
        "data: 1 bars, 1 features",
        "episode 1 evaluated: agent ...",
        "...",
    ]
    assert replace_block(new, example_block(output)) == new
    assert new.replace(example_block(output), "") == readme.replace(
        "\n".join(["```text", *read_block(readme), "```"]), ""
    )


def test_an_output_without_an_evaluation_is_refused() -> None:
    with pytest.raises(ValueError, match="no evaluation line"):
        example_block("session s: run folder /x\n")

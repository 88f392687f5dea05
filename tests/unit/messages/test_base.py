"""Test the message roles and building one message from the fields of another value."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from messages import (
    Command,
    DataLoaded,
    EpisodeFinished,
    EpisodeTrained,
    EvaluationComputed,
    EvaluationReport,
    Event,
    Reply,
    TrainEpisode,
    commands,
    events,
    message_types,
)


def test_every_registered_type_has_exactly_one_role() -> None:
    for name, cls in message_types().items():
        roles = [role for role in (Command, Reply, Event) if issubclass(cls, role)]
        assert len(roles) == 1, name


def test_events_are_the_types_of_the_events_module_and_the_rest_are_commands_or_replies() -> None:
    for name, cls in message_types().items():
        if cls.__module__ == events.__name__:
            assert issubclass(cls, Event), name
        else:
            assert cls.__module__ == commands.__name__ and not issubclass(cls, Event), name


def test_from_value_takes_the_same_named_attributes_of_a_plain_value() -> None:
    loaded = SimpleNamespace(
        source="d.csv", rows=10, features=("a",), bars_per_year=252.0, data_hash="", cached=True, seconds=1.0,
        close_only=False, dropped={}, filled=0, clipped=0,
    )  # fmt: skip

    msg = DataLoaded.from_value(loaded, sender="data")

    assert (msg.source, msg.rows, msg.features, msg.cached) == ("d.csv", 10, ("a",), True)
    assert msg.sender == "data"


def test_from_value_of_another_message_is_a_new_message_with_the_same_arrays() -> None:
    computed = EvaluationComputed(
        correlation_id="c1", sender="env", episode=2, agent={"x": 1.0}, buy_and_hold={}, close=np.ones(3)
    )

    report = EvaluationReport.from_value(computed, correlation_id="c2", model_id="m1")

    assert report.msg_id != computed.msg_id and report.sender == ""
    assert (report.correlation_id, report.model_id, report.episode) == ("c2", "m1", 2)
    assert report.close is computed.close and report.agent == {"x": 1.0}


def test_from_value_lets_given_fields_override_the_value() -> None:
    finished = EpisodeFinished(model_id="m", episode=1, steps=8, total_steps=8, seconds=1.0, steps_per_s=8.0)

    trained = EpisodeTrained.from_value(finished, steps=9)

    assert (trained.steps, trained.total_steps, trained.model_id) == (9, 8, "m")


def test_from_value_names_a_field_the_value_lacks() -> None:
    with pytest.raises(AttributeError, match="steps"):
        TrainEpisode.from_value(object(), episode=1)

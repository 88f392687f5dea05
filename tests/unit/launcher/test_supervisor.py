"""The supervision policy on a fake clock and a fake process table: restarts, the cap, hangs, starts."""

from __future__ import annotations

import math

import pytest

from launcher.supervisor import ACTOR_KINDS, SupervisionPolicy, SupervisionRules, wait_started

T0 = 1_700_000_000.0


class FakeClock:
    """Wall and monotonic time that move only when the test says so."""

    def __init__(self) -> None:
        self.wall = T0
        self.mono = 100.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono


class FakeProcesses:
    """A process table whose processes die and restart when the test says so."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []
        self.next_pid = 1000

    def die(self, kind: str, code: int) -> None:
        self.codes[kind] = code

    def exited(self) -> list[tuple[str, int]]:
        return [(kind, code) for kind, code in self.codes.items()]

    def running(self, kind: str) -> bool:
        return kind not in self.codes

    def restart(self, kind: str) -> int:
        self.calls.append(("restart", kind))
        self.codes.pop(kind, None)
        self.next_pid += 1
        return self.next_pid

    def kill(self, kind: str) -> None:
        self.calls.append(("kill", kind))
        self.codes[kind] = -9


class FakeActions:
    """Records what the policy did to the session, in order, into the process table's call log."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log
        self.restarts: list[tuple[str, int, int, str]] = []
        self.given_up: list[str] = []

    def restore_model(self) -> None:
        self.log.append(("restore", "model"))

    def restarted(self, kind: str, pid: int, restarts: int, reason: str) -> None:
        self.restarts.append((kind, pid, restarts, reason))

    def give_up(self, reason: str) -> None:
        self.given_up.append(reason)


class Beats:
    """Heartbeat times per actor; the others beat just now (fresh) or never (not fresh)."""

    def __init__(self, fresh: bool = True) -> None:
        self.fresh = fresh
        self.last: dict[str, float] = {}

    def beat_all(self, now: float) -> None:
        self.last = {kind: now for kind in ACTOR_KINDS}

    def age(self, actor: str, now: float) -> float:
        if actor in self.last:
            return now - self.last[actor]
        return 0.0 if self.fresh else math.inf


RULES = SupervisionRules(max_restarts=3, hang_timeout_s=30.0, start_timeout_s=60.0)


def make(
    rules: SupervisionRules = RULES,
) -> tuple[SupervisionPolicy, FakeClock, FakeProcesses, FakeActions, Beats]:
    clock, processes, beats = FakeClock(), FakeProcesses(), Beats()
    actions = FakeActions(processes.calls)
    policy = SupervisionPolicy(processes, rules, clock, beats.age, actions)
    return policy, clock, processes, actions, beats


def test_a_dead_actor_is_restarted_and_the_session_told_with_its_new_pid() -> None:
    policy, _, processes, actions, _ = make()
    processes.die("env", 1)

    policy.check()

    assert processes.calls == [("restart", "env")]
    assert actions.restarts == [("env", 1001, 1, "process exited with status 1")]
    assert processes.running("env")


def test_a_killed_actor_is_reported_with_its_signal() -> None:
    policy, _, processes, actions, _ = make()
    processes.die("data", -9)

    policy.check()

    assert actions.restarts[0][3] == "process killed by signal 9"


def test_a_dead_model_is_pointed_at_the_latest_checkpoint_before_it_restarts() -> None:
    policy, _, processes, _, _ = make()
    processes.die("model", -9)

    policy.check()

    assert processes.calls == [("restore", "model"), ("restart", "model")]


def test_other_actors_restart_without_touching_the_checkpoint() -> None:
    policy, _, processes, _, _ = make()
    for kind in ("data", "env", "monitor"):
        processes.die(kind, 1)

    policy.check()

    assert ("restore", "model") not in processes.calls
    assert sorted(kind for call, kind in processes.calls if call == "restart") == ["data", "env", "monitor"]


def test_the_restart_count_reported_covers_every_actor() -> None:
    policy, clock, processes, actions, _ = make()
    processes.die("env", 1)
    policy.check()
    clock.advance(1)
    processes.die("data", 1)
    policy.check()

    assert [r[2] for r in actions.restarts] == [1, 2]


def test_one_death_more_than_the_cap_within_the_window_gives_up() -> None:
    policy, clock, processes, actions, _ = make()
    for _ in range(3):
        processes.die("env", 1)
        policy.check()
        clock.advance(5)
    processes.die("env", 1)

    policy.check()

    assert len(actions.restarts) == 3
    assert actions.given_up == [
        "env actor died 4 times within a minute (process exited with status 1); giving up"
    ]
    assert policy.gave_up


def test_after_giving_up_the_policy_does_nothing_more() -> None:
    policy, clock, processes, actions, _ = make(
        SupervisionRules(max_restarts=0, hang_timeout_s=30, start_timeout_s=60)
    )
    processes.die("env", 1)
    policy.check()
    calls = list(processes.calls)
    processes.die("data", 1)
    clock.advance(1000)

    policy.check()

    assert processes.calls == calls == []
    assert len(actions.given_up) == 1


def test_deaths_older_than_the_window_do_not_count_against_the_cap() -> None:
    policy, clock, processes, actions, _ = make()
    for _ in range(3):
        processes.die("env", 1)
        policy.check()
        clock.advance(20)
    clock.advance(1)  # the first death is now 61 s old
    processes.die("env", 1)

    policy.check()

    assert actions.given_up == []
    assert len(actions.restarts) == 4


def test_the_cap_counts_each_actor_on_its_own() -> None:
    policy, clock, processes, actions, _ = make()
    for kind in ("env", "data", "monitor", "env", "data", "monitor"):
        processes.die(kind, 1)
        policy.check()
        clock.advance(1)

    assert actions.given_up == []
    assert len(actions.restarts) == 6


def test_the_window_of_the_cap_is_configurable() -> None:
    rules = SupervisionRules(max_restarts=1, hang_timeout_s=30, start_timeout_s=60, restart_window_s=10)
    policy, clock, processes, actions, _ = make(rules)
    processes.die("env", 1)
    policy.check()
    clock.advance(5)
    processes.die("env", 1)

    policy.check()

    assert actions.given_up == [
        "env actor died 2 times within 10 s (process exited with status 1); giving up"
    ]


def test_an_actor_silent_past_the_hang_timeout_is_killed() -> None:
    policy, clock, processes, _, beats = make()
    clock.advance(40)
    beats.last["model"] = clock.time() - 31

    policy.check()

    assert processes.calls == [("kill", "model")]


def test_an_actor_within_the_hang_timeout_is_left_alone() -> None:
    policy, clock, processes, _, beats = make()
    beats.beat_all(clock.time())
    clock.advance(29)

    policy.check()

    assert processes.calls == []


def test_a_killed_hung_actor_is_restarted_on_the_next_check() -> None:
    policy, clock, processes, actions, beats = make()
    beats.beat_all(clock.time())
    clock.advance(31)
    policy.check()
    assert {kind for call, kind in processes.calls if call == "kill"} == set(ACTOR_KINDS)

    policy.check()

    assert sorted(r[0] for r in actions.restarts) == sorted(ACTOR_KINDS)
    assert all(r[3] == "process killed by signal 9" for r in actions.restarts)


def test_a_restarted_actor_gets_the_start_timeout_before_its_first_heartbeat() -> None:
    policy, clock, processes, _, beats = make()
    processes.die("env", 1)
    clock.advance(10)
    policy.check()  # restarted now; its last heartbeat is from the old process, 10 s ago
    processes.calls.clear()
    beats.last["env"] = clock.time() - 10
    clock.advance(55)

    policy.check()
    assert processes.calls == []

    clock.advance(6)
    policy.check()
    assert processes.calls == [("kill", "env")]


def test_an_actor_that_never_beats_is_killed_after_the_start_timeout() -> None:
    clock, processes, beats = FakeClock(), FakeProcesses(), Beats(fresh=False)
    actions = FakeActions(processes.calls)
    policy = SupervisionPolicy(processes, RULES, clock, beats.age, actions)
    clock.advance(60)
    policy.check()
    assert processes.calls == []

    clock.advance(1)
    policy.check()

    assert sorted(kind for _, kind in processes.calls) == sorted(ACTOR_KINDS)


def test_wait_started_returns_once_every_actor_announced_itself() -> None:
    clock, processes = FakeClock(), FakeProcesses()
    announced: set[str] = set()
    pending = list(ACTOR_KINDS)

    def sleep(seconds: float) -> None:
        clock.advance(seconds)
        if pending:
            announced.add(pending.pop())

    assert wait_started(lambda: announced, processes, 10, lambda: False, clock, sleep) == ""
    assert announced == set(ACTOR_KINDS)


def test_wait_started_names_the_actors_that_did_not_start_in_time() -> None:
    clock, processes = FakeClock(), FakeProcesses()

    why = wait_started(lambda: {"monitor", "data"}, processes, 2, lambda: False, clock, clock.advance)

    assert why == "actor(s) env, model did not start within 2 s"


def test_wait_started_reports_a_process_that_died_while_starting() -> None:
    clock, processes = FakeClock(), FakeProcesses()
    processes.die("data", 3)

    why = wait_started(set, processes, 10, lambda: False, clock, clock.advance)

    assert why == "data actor process exited with status 3 while starting (see its log)"


def test_wait_started_stops_when_interrupted() -> None:
    clock, processes = FakeClock(), FakeProcesses()

    why = wait_started(set, processes, 10, lambda: True, clock, clock.advance)

    assert why == "interrupted while starting"


@pytest.mark.parametrize("kind", ACTOR_KINDS)
def test_every_kind_is_supervised(kind: str) -> None:
    policy, _, processes, actions, _ = make()
    processes.die(kind, 2)

    policy.check()

    assert actions.restarts[0][0] == kind


def test_an_actor_busy_with_one_message_past_the_stuck_timeout_is_killed() -> None:
    rules = SupervisionRules(max_restarts=3, hang_timeout_s=30, start_timeout_s=60, stuck_timeout_s=600)
    clock, processes, beats = FakeClock(), FakeProcesses(), Beats()
    busy = {"model": 601.0}
    policy = SupervisionPolicy(
        processes,
        rules,
        clock,
        beats.age,
        FakeActions(processes.calls),
        busy_for=lambda k, w: busy.get(k, 0.0),
    )

    policy.check()

    assert processes.calls == [("kill", "model")]


def test_an_actor_busy_within_the_stuck_timeout_is_left_alone() -> None:
    rules = SupervisionRules(max_restarts=3, hang_timeout_s=30, start_timeout_s=60, stuck_timeout_s=600)
    clock, processes, beats = FakeClock(), FakeProcesses(), Beats()
    policy = SupervisionPolicy(
        processes, rules, clock, beats.age, FakeActions(processes.calls), busy_for=lambda k, w: 599.0
    )

    policy.check()

    assert processes.calls == []

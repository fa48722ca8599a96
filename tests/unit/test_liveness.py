"""Stage liveness: what the watchdog, `status` and the metrics are told about each stage."""

from __future__ import annotations

from agent.liveness import Liveness, Stage, StageState


class MonoClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_stage_is_starting_until_its_first_beat_then_alive() -> None:
    """A new stage reports STARTING; after beat() it is ALIVE."""
    clock = MonoClock()
    stage = Stage("intake", clock=clock)
    assert stage.report().state is StageState.STARTING
    stage.beat()
    assert stage.report().state is StageState.ALIVE


def test_a_silent_stage_becomes_stalled_and_a_beat_revives_it() -> None:
    """Silent for longer than stall_after → STALLED; the next beat makes it ALIVE again."""
    clock = MonoClock()
    stage = Stage("dispatch", stall_after=30.0, clock=clock)
    stage.beat()
    clock.now += 30.0
    assert stage.report().state is StageState.ALIVE
    clock.now += 0.5
    report = stage.report()
    assert report.state is StageState.STALLED and report.silent_s == 30.5
    stage.beat()
    assert stage.report().state is StageState.ALIVE


def test_failure_is_reported_once_with_the_exception_and_stays_dead() -> None:
    """failed() tells the supervisor once; the stage stays DEAD with the exception text."""
    told: list[tuple[str, BaseException]] = []
    liveness = Liveness(on_failure=lambda stage, exc: told.append((stage.name, exc)))
    stage = liveness.stage("intake")
    stage.beat()
    error = RuntimeError("boom")
    stage.failed(error)
    stage.failed(ValueError("later"))
    stage.beat()
    assert told == [("intake", error)]
    report = stage.report()
    assert report.state is StageState.DEAD and report.error == "RuntimeError: boom"
    assert not liveness.healthy()


def test_healthy_only_while_every_stage_is_alive_or_starting() -> None:
    """One stalled stage among alive ones makes the whole daemon unhealthy; stopped is not
    healthy either (a stopped stage no longer does its job)."""
    clock = MonoClock()
    liveness = Liveness(clock=clock)
    fast = liveness.stage("mqtt", stall_after=10.0)
    slow = liveness.stage("intake", stall_after=10.0)
    fast.beat()
    slow.beat()
    assert liveness.healthy()
    clock.now += 11.0
    fast.beat()
    assert not liveness.healthy()
    assert liveness.summary()["intake"]["state"] == "stalled"
    slow.beat()
    assert liveness.healthy()
    slow.stopped()
    assert liveness.summary()["intake"]["state"] == "stopped" and not liveness.healthy()

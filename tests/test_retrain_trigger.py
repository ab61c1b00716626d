"""Counting annotation events: the threshold starts one loop, a burst within the cooldown starts no more, the
cooldown ends, other events and other projects count apart, and a restarted backend keeps its counts."""

from __future__ import annotations

from poseops.params import SchedulesParams
from poseops.retrain_trigger import RetrainTrigger, changed_annotations
from poseops.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def event(title: str = "mice", action: str = "ANNOTATION_CREATED", **extra) -> dict:
    return {"action": action, "project": {"id": 3, "title": title}, **extra}


def trigger(tmp_path, clock, after: int = 5, cooldown: float = 10.0) -> RetrainTrigger:
    config = SchedulesParams(retrain_after=after, retrain_cooldown_minutes=cooldown)
    return RetrainTrigger(Settings(home=tmp_path / "home"), config, clock=clock)


def test_a_burst_past_the_threshold_starts_one_loop_then_the_cooldown_holds(tmp_path):
    clock = Clock()
    t = trigger(tmp_path, clock)
    decisions = [t.decide(event()) for _ in range(500)]
    assert [d.start for d in decisions].count(True) == 1
    assert decisions[4].start and decisions[4].dataset == "mice"  # the fifth change reached retrain_after
    assert "cooling down" in decisions[-1].reason and decisions[-1].pending == 495
    clock.now += 10 * 60 - 1
    assert not t.decide(event()).start
    clock.now += 2  # the cooldown is over, and far more than 5 changes waited
    assert t.decide(event()).start
    assert t.decide(event()).pending == 1


def test_only_annotation_changes_of_a_project_count_and_projects_count_apart(tmp_path):
    clock = Clock()
    t = trigger(tmp_path, clock, after=3)
    for ignored in (event(action="TASKS_CREATED"), event(action="PROJECT_UPDATED"), {"action": "ANNOTATION_CREATED"}):
        assert t.decide(ignored).counted == 0
    assert t.decide(event(action="ANNOTATIONS_DELETED", annotations=[{"id": 1}, {"id": 2}])).pending == 2
    assert t.decide(event("rats")).pending == 1
    assert t.decide(event(action="ANNOTATION_UPDATED")).start
    assert changed_annotations(event(action="ANNOTATIONS_CREATED", annotations=[{}, {}, {}])) == 3


def test_counts_survive_a_restart_and_zero_never_starts(tmp_path):
    clock = Clock()
    for _ in range(4):
        trigger(tmp_path, clock).decide(event())
    assert trigger(tmp_path, clock).decide(event()).start  # a new backend process reads the same state
    off = trigger(tmp_path / "off", clock, after=0)
    assert not any(off.decide(event()).start for _ in range(50))
    assert "never" in off.decide(event()).reason

"""median_times: warm-up, interleaved rounds, medians."""
import time

from bnn import timing
from bnn.timing import median_times


def test_rounds_are_interleaved_after_the_warm_up():
    calls = []
    median_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=2)
    assert calls == ["a", "b"] * 5


def test_medians_order_the_contenders():
    t = median_times({"fast": lambda: None, "slow": lambda: time.sleep(0.002)}, repeats=5)
    assert set(t) == {"fast", "slow"} and t["fast"] < 0.002 <= t["slow"]


def test_number_runs_each_contender_several_times_per_round_and_reports_seconds_per_run():
    calls = []
    t = median_times({"a": lambda: calls.append("a"), "b": lambda: (calls.append("b"), time.sleep(0.001))},
                     repeats=2, warmup=1, number=3)
    assert calls == ["a", "b"] + (["a"] * 3 + ["b"] * 3) * 2
    assert 0.001 <= t["b"] < 0.003  # per run, not per round of 3


def test_settle_runs_each_contender_untimed_until_that_long_has_passed_in_every_round(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    calls = []

    def contender(name, seconds):
        def run():
            calls.append(name)
            clock[0] += seconds
        return run

    t = median_times({"a": contender("a", 1.0), "b": contender("b", 0.5)}, repeats=2, warmup=0, number=2, settle=2.5)
    # per round: "a" 3 runs untimed (1, 2, 3 s >= 2.5), 2 timed; "b" 5 untimed (0.5 ... 2.5 s), 2 timed
    assert calls == (["a"] * 5 + ["b"] * 7) * 2
    assert t == {"a": 1.0, "b": 0.5}

r"""Timing contenders side by side in one process, as every bnn benchmark figure is measured."""
import statistics
import time
from typing import Any, Callable, Dict

__all__ = ["median_times"]


def median_times(contenders: Dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                 number: int = 1, settle: float = 0.0) -> Dict[str, float]:
    r"""Run every contender ``warmup`` times, then ``repeats`` interleaved rounds (``number`` runs of each
    per round, so that a slow moment of the machine hits all of them); return the median seconds per run.

    ``number > 1`` measures a contender in its steady state (its data in cache, as a kernel runs inside a
    loop), for work much shorter than a millisecond; ``number = 1`` measures each run after the others.

    ``settle`` (seconds): in every round, each contender first runs untimed (at least once) until that much
    time has passed, so that its timed runs do not pay for the one before it. The core's speed depends on
    what it ran last: on the Xeon of docs/benchmarks.md, a binary convolution runs 35-50% slower in the first
    1.5 ms after a float convolution (AVX-512 multiply-adds), and 5-10% slower up to some 6 ms after it, than
    after its own runs.

    Example::

        >>> from bnn.timing import median_times
        >>> t = median_times({"a": lambda: sum(range(1000)), "b": lambda: sum(range(2000))}, repeats=5)
        >>> sorted(t)
        ['a', 'b']
    """
    for _ in range(warmup):
        for run in contenders.values():
            run()
    times: Dict[str, list] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            if settle > 0:
                begin = time.perf_counter()
                run()
                while time.perf_counter() - begin < settle:
                    run()
            start = time.perf_counter()
            for _ in range(number):
                run()
            times[name].append((time.perf_counter() - start) / number)
    return {name: statistics.median(values) for name, values in times.items()}

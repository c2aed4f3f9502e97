"""The native thread pool (_pool.c) that the compiled kernels split their work on: every index of a
parallel_for runs exactly once, whatever the thread count, grain and concurrent callers."""
import os
import threading
import time

import pytest

try:
    from dcm.runtime.cpu import _pool
except ImportError:
    if os.environ.get("DCM_ALLOW_NO_NATIVE") == "1":
        pytest.skip("built without the compiled kernels (DCM_ALLOW_NO_NATIVE=1)", allow_module_level=True)
    pytest.fail("dcm.runtime.cpu._pool was not built (no C compiler at install?)", pytrace=False)


def visits(count: int, grain: int, threads: int) -> tuple[set[int], int]:
    hits, ranges = _pool.coverage(count, grain, threads)
    assert len(hits) == count
    return set(hits), ranges


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("count, grain", [(1, 1), (2, 1), (10, 3), (1000, 7), (5, 5), (6, 5), (100_003, 16)])
def test_every_index_once(count, grain, threads):
    seen, ranges = visits(count, grain, threads)
    assert seen == {1}
    units = -(-count // grain)
    assert 1 <= ranges <= max(1, min(units, threads * 4))


def test_split_into_ranges_with_threads():
    # a job that waited on a descheduled worker (a loaded machine) runs the next 20 ms on the caller alone
    deadline, ranges = time.monotonic() + 5, visits(1000, 1, 2)[1]
    while ranges == 1 and time.monotonic() < deadline:
        time.sleep(0.03)
        ranges = visits(1000, 1, 2)[1]
    assert ranges > 1
    assert _pool.stalls() >= 0
    assert visits(1000, 1, 1)[1] == 1  # one thread: one call over everything
    assert visits(0, 1, 2) == (set(), 0)
    assert _pool.workers() >= 1


def test_concurrent_callers():
    """Sessions in several Python threads: a caller that finds the pool busy runs its ranges itself."""
    failures = []

    def call() -> None:
        for _ in range(200):
            seen, _ = visits(4096, 8, 2)
            if seen != {1}:
                failures.append(seen)

    workers = [threading.Thread(target=call) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not failures


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_child_of_fork_starts_its_own_workers():
    visits(1000, 1, 2)  # the parent's workers are running
    pid = os.fork()
    if pid == 0:  # the child: its first job must neither hang nor lose ranges
        os._exit(0 if visits(1000, 1, 2)[0] == {1} else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError):
        _pool.coverage(-1, 1, 2)
    with pytest.raises(ValueError):
        _pool.coverage(10, 0, 2)


def test_stall_policy_ignores_noise_and_backs_off_on_a_busy_core():
    """A stall is noise when its wait is under a tenth of the time since the last stall or back-off (a
    quiet machine's daemons): the pool keeps its threads. Stalls that come sooner send the next jobs to
    the caller alone, 20 ms, then twice as long each time, up to 1.28 s; noise starts that over."""
    ms = 1_000_000
    quiet = [(1000 * ms, 1 * ms), (1300 * ms, 1 * ms), (1600 * ms, 2 * ms)]
    assert _pool.stall_policy(quiet) == [0, 0, 0]
    busy = [(1000 * ms, 3 * ms), (1005 * ms, 3 * ms), (1030 * ms, 3 * ms), (1075 * ms, 3 * ms)]
    assert _pool.stall_policy(busy) == [0, 1028 * ms, 1073 * ms, 1158 * ms]
    # stalls one after another: each back-off twice the last, up to 1.28 s
    again = [(1000 * ms, 3 * ms)] + [(1000 * ms + i, 3 * ms) for i in range(1, 10)]
    lengths = [end - finished - 3 * ms for end, (finished, _) in zip(_pool.stall_policy(again)[1:], again[1:])]
    assert lengths == [20 * ms * 2**i for i in range(7)] + [1280 * ms, 1280 * ms]
    # a stall long after the last back-off is noise again, and the next back-off starts from 20 ms
    assert _pool.stall_policy(busy[:3] + [(5000 * ms, 3 * ms), (5004 * ms, 3 * ms)])[3:] == [0, 5027 * ms]

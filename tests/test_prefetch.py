"""The prefetch queue: order, bound, errors at the right place, and a reader that stops when asked."""
import threading
import time

import pytest

from nemo_aesthetic.prefetch import Prefetcher, prefetch


def wait_until(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_items_arrive_in_order_from_another_thread():
    threads = set()

    def source():
        for i in range(500):
            threads.add(threading.current_thread().name)
            yield i

    assert list(prefetch(source(), depth=3, name="reader")) == list(range(500))
    assert threads == {"reader"}


def test_reader_runs_at_most_depth_items_ahead():
    produced = []

    def source():
        for i in range(100):
            produced.append(i)
            yield i

    with Prefetcher(source(), depth=4) as fetcher:
        wait_until(lambda: len(produced) >= 5)
        time.sleep(0.3)  # a reader not held back would be far ahead by now
        assert len(produced) == 5  # 4 waiting in the queue + 1 waiting to be put
        assert next(fetcher) == 0
        wait_until(lambda: len(produced) == 6)
        time.sleep(0.2)
        assert len(produced) == 6


def test_error_is_raised_after_the_items_before_it():
    def source():
        yield 1
        yield 2
        raise OSError("disk gone at item 3")

    fetcher = Prefetcher(source(), depth=2)
    assert next(fetcher) == 1 and next(fetcher) == 2
    with pytest.raises(OSError, match="item 3"):
        next(fetcher)
    with pytest.raises(StopIteration):
        next(fetcher)


def test_close_stops_the_reader_and_closes_its_source():
    closed = threading.Event()

    def source():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    fetcher = Prefetcher(source(), depth=2)
    assert next(fetcher) == 0
    fetcher.close()
    assert closed.wait(5) and not fetcher._thread.is_alive()
    with pytest.raises(StopIteration):
        next(fetcher)


def test_leaving_a_generator_early_stops_its_reader():
    closed = threading.Event()

    def source():
        try:
            yield from range(10**9)
        finally:
            closed.set()

    gen = prefetch(source(), depth=2)
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()
    assert closed.wait(5)


def test_setup_context_wraps_the_reader():
    events = []

    class Context:
        def __enter__(self):
            events.append(("enter", threading.current_thread().name))

        def __exit__(self, *exc):
            events.append(("exit", threading.current_thread().name))

    assert list(prefetch(iter([1, 2]), setup=Context, name="r")) == [1, 2]
    wait_until(lambda: len(events) == 2)
    assert events == [("enter", "r"), ("exit", "r")]
    with pytest.raises(ValueError):
        Prefetcher([], depth=0)

"""The stage front's Dask executor on a real two-worker LocalCluster: stages are set up once per
worker (not per partition) and torn down when the run ends; a failing partition does not cancel
the others; a transient I/O error runs the partition again and the run succeeds.

The stages here record what they do as files in a folder (one per setup, per partition, per
teardown), so what each worker process did is counted from outside it."""
from __future__ import annotations

import os
import sys
import uuid

import cloudpickle
import pytest

from nemo_aesthetic.pipeline import Pipeline
from nemo_aesthetic.stages.base import ProcessingStage
from nemo_aesthetic.tasks import EmptyTask


class RecordingStage(ProcessingStage):
    """Writes a file per setup, per partition processed and per teardown into ``log``; fails the
    partitions named in ``fail`` (permanently) and those in ``flaky`` (once, with a dropped connection)."""

    name = "recording"

    def __init__(self, log: str, fail=(), flaky=()):
        self.log, self.fail, self.flaky = log, set(fail), set(flaky)

    def _mark(self, what: str) -> str:
        path = os.path.join(self.log, f"{what}-{os.getpid()}-{uuid.uuid4().hex}")
        open(path, "w").close()
        return path

    def setup(self, worker_metadata=None) -> None:
        self._mark("setup")
        self.ready = True

    def teardown(self) -> None:
        self._mark("teardown")

    def process(self, task):
        assert self.ready
        part = task.data
        if part in self.fail:
            raise ValueError(f"partition {part} is bad")
        first_try = os.path.join(self.log, f"tried-{part}")
        if part in self.flaky and not os.path.exists(first_try):
            open(first_try, "w").close()
            raise ConnectionResetError(f"connection reset reading partition {part}")
        self._mark(f"done.{part}")
        return task


def _marks(log, prefix: str) -> list[str]:
    return [name for name in os.listdir(log) if name.startswith(prefix)]


@pytest.fixture
def run(cpu_client, tmp_path):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers do not import tests/

    def run_pipeline(partitions: int, **stage_options):
        tasks = [EmptyTask(dataset_name="parts", data=i) for i in range(partitions)]
        for i, task in enumerate(tasks):
            task._set_task_id("", i)
        return Pipeline("recording", stages=[RecordingStage(str(tmp_path), **stage_options)]).run(
            cpu_client, initial_tasks=tasks)
    yield run_pipeline
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_stages_are_set_up_once_per_worker_not_per_partition(run, tmp_path, cpu_client):
    out = run(12)
    assert sorted(t.data for t in out) == list(range(12))
    workers = len(cpu_client.scheduler_info()["workers"])
    setups = _marks(tmp_path, "setup")
    assert 1 <= len(setups) <= workers, f"{len(setups)} setups for 12 partitions on {workers} workers"
    assert len({name.split("-")[1] for name in setups}) == len(setups)  # one per worker process
    assert len(_marks(tmp_path, "teardown")) == len(setups)  # torn down when the run ends


def test_a_failed_partition_does_not_cancel_the_others(run, tmp_path):
    with pytest.raises(ValueError, match="partition 3 is bad") as info:
        run(8, fail={3})
    assert sorted(int(n.split("-")[0].split(".")[1]) for n in _marks(tmp_path, "done.")) == [0, 1, 2, 4, 5, 6, 7]
    assert "1 of 8 partition(s) failed" in "".join(info.value.__notes__) and "parts/3" in "".join(info.value.__notes__)


def test_a_transient_error_runs_the_partition_again(run, tmp_path):
    out = run(6, flaky={2, 4})
    assert sorted(t.data for t in out) == list(range(6))
    assert os.path.exists(tmp_path / "tried-2") and os.path.exists(tmp_path / "tried-4")

"""NeMo Curator 1.x's own image stage tests (v1.3.0, ``tests/stages/image``), with only the
package renamed, run against nemo_aesthetic's stage front.

Two of them test an implementation choice we deliberately do not share; they are expected to
fail (strict, so if that ever changes we hear of it):

* the reader test that fakes a DALI pipeline (``_create_dali_pipeline``): we read tars with the
  shard engine (streamed, per-image reasons), not DALI;
* the writer test that wants ``pq.write_table(table, final_path)``: we write each Parquet to a
  temporary name and rename it, so a crash never leaves a truncated file next to its tar.

Some of upstream's tests put stubs into ``sys.modules`` (``PIL``, ``nvidia.dali``, ``pyarrow``)
and never take them out; the fixture below restores those entries after each test so the rest of
our suite sees the real modules.
"""
import sys

import pyarrow.parquet  # noqa: F401  upstream's writer tests stub pyarrow only where it is not imported yet
import pytest

DEVIATIONS = {
    "test_process_streams_batches_from_dali": "we read tars with the shard engine, not DALI",
    "test_write_parquet_collision_and_path": "our Parquet writes are atomic (temporary name, then rename)",
}
_STUBBED = ("PIL", "nvidia", "pyarrow")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.name in DEVIATIONS and "compat_v1" in str(item.fspath):
            item.add_marker(pytest.mark.xfail(reason=DEVIATIONS[item.name], strict=True))


@pytest.fixture(autouse=True)
def _restore_stubbed_modules():
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in _STUBBED}
    yield
    for name in [k for k in sys.modules if k.split(".")[0] in _STUBBED]:
        if name not in saved:
            del sys.modules[name]
    sys.modules.update(saved)

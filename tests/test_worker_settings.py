"""A worker the nanny restarts (after running out of memory, say) comes back with the driver's settings."""
from __future__ import annotations

import os

from nemo_aesthetic import get_client
from nemo_aesthetic.worker_settings import register_worker_settings


def _env(name):
    import dask

    return os.getpid(), os.environ.get(name), dask.config.get("dataframe.backend")


def test_a_restarted_worker_gets_the_settings_again(monkeypatch):
    """The setting is made after the workers started, so neither they nor their nanny inherited it:
    only the plugin carries it, to the running worker and to its replacement."""
    monkeypatch.delenv("NEMO_AESTHETIC_TEST_SETTING", raising=False)
    client = get_client(cluster_type="cpu", n_workers=1, threads_per_worker=1, dashboard_address=":0")
    try:
        assert list(client.run(_env, "NEMO_AESTHETIC_TEST_SETTING").values())[0][1] is None
        monkeypatch.setenv("NEMO_AESTHETIC_TEST_SETTING", "kept")
        register_worker_settings(client)
        before = list(client.run(_env, "NEMO_AESTHETIC_TEST_SETTING").values())
        client.restart()
        after = list(client.run(_env, "NEMO_AESTHETIC_TEST_SETTING").values())
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    assert before[0][1:] == ("kept", "pandas") and after[0][1:] == ("kept", "pandas")
    assert after[0][0] != before[0][0], "the worker was restarted"

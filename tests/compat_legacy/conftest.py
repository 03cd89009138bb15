"""Fixtures for NeMo Curator 0.x's own image tests, ported with the package renamed.

Upstream runs them on a GPU (``gpu_client``, a LocalCUDACluster); here ``gpu_client`` is a CPU
LocalCluster, and a test that needs CUDA or cuDF itself is skipped with the reason its file gives
in ``LEFT_OUT``. Upstream reads ``tests/image_data/00000.tar``; the same file (byte for byte) is
``../shared/testdata/upstream_shards/nemo_curator_legacy_00000.tar``, which the committed symlink
``tests/compat_legacy/image_data/00000.tar`` points at, so the ported paths stay as upstream wrote
them (tests needing it skip without ../shared, or fail under $NEMO_AESTHETIC_REQUIRE_SHARED=1). Default weights are
placed in the test's isolated ``$NEMO_AESTHETIC_HOME``: the real aesthetic head from
../shared/models, and a randomly initialised NSFW detector (its file is not redistributable here).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import AESTHETIC_WEIGHTS as AESTHETIC
from conftest import TESTDATA, needs_shared

UPSTREAM_TAR = TESTDATA / "upstream_shards" / "nemo_curator_legacy_00000.tar"


#: Ported tests that read files from ../shared: (file, test) -> (the file they need, what it is).
NEEDS_SHARED = {
    ("test_timm.py", "test_load_dataset_shard"): (UPSTREAM_TAR, "NeMo Curator's test shard (tests/image_data/00000.tar)"),
    ("test_aesthetic.py", "test_init_defaults"): (AESTHETIC, "the real LAION aesthetic weights (the default model)"),
}


def _available() -> dict:
    import importlib.util

    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception:
        cuda = False
    return {"NEEDS_CUDA": cuda, "NEEDS_CUDF": importlib.util.find_spec("cudf") is not None}


def pytest_collection_modifyitems(config, items):
    available = None
    for item in items:
        module = getattr(item, "module", None)
        if module is None or not hasattr(module, "LEFT_OUT"):
            continue
        available = available or _available()
        name = getattr(item, "originalname", item.name)
        if name in module.LEFT_OUT:
            item.add_marker(pytest.mark.skip(reason=f"left out of the port: {module.LEFT_OUT[name]}"))
        shared = NEEDS_SHARED.get((item.path.name, name))
        if shared is not None:
            item.add_marker(needs_shared(*shared))
        for need, what in (("NEEDS_CUDA", "CUDA"), ("NEEDS_CUDF", "cuDF")):
            if name in getattr(module, need, {}) and not available[need]:
                item.add_marker(pytest.mark.skip(reason=f"needs {what}: {getattr(module, need)[name]}"))


@pytest.fixture(scope="session")
def gpu_client(cpu_client):
    """Upstream's session cluster, here the suite's CPU LocalCluster."""
    return cpu_client


@pytest.fixture(autouse=True)
def _default_weights(_isolated_home):
    import torch

    from nemo_aesthetic.image.classifiers.torch_models import NSFWModel

    home = Path(os.environ["NEMO_AESTHETIC_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    if AESTHETIC.exists():
        os.symlink(AESTHETIC, home / AESTHETIC.name)
    torch.manual_seed(0)
    torch.save(NSFWModel().state_dict(), home / "clip_autokeras_binary_nsfw.pth")

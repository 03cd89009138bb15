"""Fixtures for NeMo Curator 0.x's own image tests, ported with the package renamed.

Upstream runs them on a GPU (``gpu_client``, a LocalCUDACluster); here ``gpu_client`` is a CPU
LocalCluster, and a test that needs CUDA or cuDF itself is skipped with the reason its file gives
in ``LEFT_OUT``. Upstream reads ``tests/image_data/00000.tar``; the same file (byte for byte) is
``../shared/testdata/upstream_shards/nemo_curator_legacy_00000.tar``, linked into a temporary
``image_data`` directory (tests needing it skip when ../shared is absent). Default weights are
placed in the test's isolated ``$NEMO_AESTHETIC_HOME``: the real aesthetic head from
../shared/models, and a randomly initialised NSFW detector (its file is not redistributable here).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("NEMO_AESTHETIC_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
UPSTREAM_TAR = SHARED / "testdata" / "upstream_shards" / "nemo_curator_legacy_00000.tar"
AESTHETIC = SHARED / "models" / "sac+logos+ava1-l14-linearMSE.pth"


#: Ported tests that read files from ../shared: (file, test) -> the file they need.
NEEDS_SHARED = {
    ("test_timm.py", "test_load_dataset_shard"): UPSTREAM_TAR,
    ("test_aesthetic.py", "test_init_defaults"): AESTHETIC,
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
        if shared is not None and not shared.exists():
            item.add_marker(pytest.mark.skip(reason=f"needs {shared} (../shared; set NEMO_AESTHETIC_SHARED)"))
        for need, what in (("NEEDS_CUDA", "CUDA"), ("NEEDS_CUDF", "cuDF")):
            if name in getattr(module, need, {}) and not available[need]:
                item.add_marker(pytest.mark.skip(reason=f"needs {what}: {getattr(module, need)[name]}"))


@pytest.fixture(scope="session")
def gpu_client(cpu_client):
    """Upstream's session cluster, here the suite's CPU LocalCluster."""
    return cpu_client


@pytest.fixture(autouse=True)
def _default_weights(_isolated_home, monkeypatch):
    import torch

    from nemo_aesthetic.image.classifiers.torch_models import NSFWModel

    home = Path(os.environ["NEMO_AESTHETIC_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    if AESTHETIC.exists():
        os.symlink(AESTHETIC, home / AESTHETIC.name)
    torch.manual_seed(0)
    torch.save(NSFWModel().state_dict(), home / "clip_autokeras_binary_nsfw.pth")


@pytest.fixture
def needs_aesthetic_weights():
    if not AESTHETIC.exists():
        pytest.skip(f"needs the aesthetic weights at {AESTHETIC} (../shared/models)")


@pytest.fixture(scope="session")
def upstream_image_data(tmp_path_factory) -> Path:
    """A directory laid out like upstream's ``tests/image_data`` (00000.tar)."""
    if not UPSTREAM_TAR.exists():
        pytest.skip(f"needs NeMo Curator's test shard at {UPSTREAM_TAR} (../shared/testdata)")
    root = tmp_path_factory.mktemp("image_data")
    shutil.copyfile(UPSTREAM_TAR, root / "00000.tar")
    return root

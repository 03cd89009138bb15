"""Without the shared data the tests that need it skip with a reason naming what to provide, and
CI (NEMO_AESTHETIC_REQUIRE_SHARED=1, set by .ci/run) fails instead of quietly skipping them."""
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# One test that needs ../shared/testdata and one that needs the real weights (fixtures only).
NEEDS_SHARED = [f"{TESTS / 'test_smoke_layout.py'}", f"{TESTS / 'test_weights.py'}::test_cached_file_is_used_offline"]


def _pytest(tmp_path, require: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NEMO_AESTHETIC_SHARED": str(tmp_path / "no-shared-here"),
           "NEMO_AESTHETIC_REQUIRE_SHARED": require}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *NEEDS_SHARED],
                          capture_output=True, text=True, env=env, cwd=TESTS.parent, timeout=300)


def test_missing_shared_data_skips_with_a_reason_naming_the_variable(tmp_path):
    proc = _pytest(tmp_path, "0")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "2 skipped" in proc.stdout, proc.stdout[-3000:]
    assert "$NEMO_AESTHETIC_SHARED" in proc.stdout and "testdata" in proc.stdout
    assert "sac+logos+ava1-l14-linearMSE.pth" in proc.stdout


def test_ci_turns_those_skips_into_failures(tmp_path):
    proc = _pytest(tmp_path, "1")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "2 errors" in proc.stdout and "NEMO_AESTHETIC_REQUIRE_SHARED=1 forbids skipping" in proc.stdout

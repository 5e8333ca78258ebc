import json
import subprocess
import sys

import pytest

from costmodel.errors import UserError
from costmodel.data.release import release, summary, verify

from .test_shards import write_some


@pytest.fixture
def released(tmp_path, capture):
    write_some(tmp_path / "data", capture, error_at=1)
    return release("0.1", root=tmp_path / "data", out=tmp_path / "releases")


def test_release_writes_manifest_datasheet_and_verifies(released):
    manifest = json.loads((released / "manifest.json").read_text())
    assert manifest["tables"]["measurements"]["rows"] == 5
    assert manifest["sources"]["host"]["licence"] == "Apache-2.0"
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])
    sheet = (released / "DATASHEET.md").read_text()
    assert "How" in sheet or "how each part was measured" in sheet
    assert verify(released) == []
    counts = summary(released)
    assert counts["measurements"]["by_hardware"] == {"cpu-test": 5}
    assert counts["measurements"]["failed"] == 1


def test_releases_are_immutable(released, tmp_path):
    with pytest.raises(UserError, match="immutable"):
        release("0.1", root=tmp_path / "data", out=tmp_path / "releases")


def test_corruption_is_caught_and_named(released):
    target = next(released.rglob("measurements/**/*.parquet"))
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    problems = verify(released)
    assert len(problems) == 1 and target.name in problems[0] and "sha256" in problems[0]
    (released / "stray.parquet").write_bytes(b"PAR1")
    assert any("not in the manifest" in p for p in verify(released))


def test_verify_cli_exit_codes(released):
    ok = subprocess.run([sys.executable, "-m", "costmodel.cli", "dataset", "verify", str(released)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    (released / "manifest.json").write_text("{}")
    bad = subprocess.run([sys.executable, "-m", "costmodel.cli", "dataset", "verify", str(released)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "manifest" in bad.stderr

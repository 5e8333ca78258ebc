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


# ---------------------------------------------------------------------------------------------
# Release integrity: every tampering the verifier must catch


def _tamper_manifest(released, change):
    path = released / "manifest.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=1))


@pytest.mark.parametrize("tamper,needle", [
    (lambda r: (r / "notes.txt").write_text("hello"), "notes.txt: not in the manifest"),
    (lambda r: (r / "DATASHEET.md").unlink(), "DATASHEET.md: missing"),
    (lambda r: (r / "DATASHEET.md").write_text((r / "DATASHEET.md").read_text() + "x"), "DATASHEET.md: differs"),
    (lambda r: _tamper_manifest(r, lambda d: d["sources"]["host"].update(licence="MIT")), "licence"),
    (lambda r: _tamper_manifest(r, lambda d: d["tables"]["measurements"].update(rows=99)), "99 rows"),
    (lambda r: _tamper_manifest(r, lambda d: d["tables"]["measurements"]["columns"].pop()), "columns listed"),
    (lambda r: _tamper_manifest(r, lambda d: d["files"].append(dict(d["files"][0]))), "listed twice"),
    (lambda r: _tamper_manifest(r, lambda d: d["files"][0].update(path="../../outside.parquet")), "outside"),
    (lambda r: _tamper_manifest(r, lambda d: d["files"][0].pop("path")), "needs path"),
])
def test_tampering_is_found(released, tamper, needle):
    tamper(released)
    problems = verify(released)
    assert any(needle in p for p in problems), problems


def test_a_tampered_release_is_neither_trained_on_nor_summarised(released):
    from costmodel.models.train import training_graphs

    (released / "extra.parquet").write_bytes(b"PAR1")
    with pytest.raises(UserError, match="fails verification"):
        training_graphs(released, released.parent / "cache", progress=False)
    r = subprocess.run([sys.executable, "-m", "costmodel.cli", "dataset", "summary", str(released)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "fails verification" in r.stderr and "Traceback" not in r.stderr

"""The DeepBench importer on three of the real tabs (and their Specs), one row made unreadable."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from costmodel.data.shards import read_table
from costmodel.errors import UserError
from costmodel.data.importers import deepbench

DATA = Path(__file__).resolve().parents[4].parent / "shared" / "data" / "deepbench"
pytestmark = pytest.mark.skipif(
    not (DATA / "csv").is_dir(),
    reason=f"DeepBench data not found at {DATA} (the shared data folder beside the repository)")

V100_FP32 = "results_train_DeepBench_NV_V100__Results_FP32.csv"
T4_FP16 = "results_train_DeepBench_NV_T4__Results_FP16_ip_Mixed_math.csv"
INT8 = "results_inference_server_DeepBench_NV_1080Ti__Results_Mixed_Precision.csv"
SPECS = ("results_train_DeepBench_NV_V100__Specs.csv", "results_train_DeepBench_NV_T4__Specs.csv",
         "results_inference_server_DeepBench_NV_1080Ti__Specs.csv")
BROKEN_LINE = 5  # a GEMM row of the V100 tab whose M we make unreadable


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("deepbench")
    (src / "csv").mkdir()
    for name in (T4_FP16, INT8, *SPECS):
        shutil.copy(DATA / "csv" / name, src / "csv" / name)
    lines = (DATA / "csv" / V100_FP32).read_text().splitlines(keepends=True)
    row = next(csv.reader([lines[BROKEN_LINE - 1]]))
    row[2] = "n/a"  # M
    lines[BROKEN_LINE - 1] = ",".join(row) + "\n"
    (src / "csv" / V100_FP32).write_text("".join(lines))
    return src


@pytest.fixture(scope="module")
def imported(subset, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("dataset")
    return root, deepbench.run(subset, root=root)


def _with_kernels(root: Path) -> pd.DataFrame:
    m = read_table("measurements", root)
    subs = read_table("subdiagrams", root).drop_duplicates("subdiagram_hash").set_index("subdiagram_hash")
    m["flops"] = m.subdiagram_hash.map(subs.flops)
    m["record"] = m.subdiagram_hash.map(
        lambda h: json.loads(subs.subdiagram_json[h]) if isinstance(h, str) else None)
    m["extra"] = m.extra_json.map(json.loads)
    return m


def test_counts_and_skips(imported):
    root, counts = imported
    assert counts["skipped_rnn"] > 0 and counts["skipped_int8"] > 0 and counts["skipped_allreduce"] > 0
    m = read_table("measurements", root)
    assert len(m) == counts["measurements"] > 500
    assert m.measurement_id.is_unique
    assert set(m.scope) == {"kernel"} and (m.source == "deepbench").all()
    assert set(m.licence) == {"Apache-2.0"} and set(m.source_commit) == {"unknown"}


def test_hardware_names(imported):
    root, _ = imported
    hw = read_table("hardware", root).set_index("hardware")
    # The int8-only 1080 Ti tab writes no rows, so no hardware row either.
    assert sorted(hw.index) == ["t4", "v100-sxm2-16gb"]
    assert hw.loc["t4"].descriptor_json is not None
    assert not pd.isna(hw.loc["v100-sxm2-16gb"].profile_json)  # a DGX-1 SXM2 card


def test_gemm_flops_match_deepbench(imported):
    """FLOPs over time equals DeepBench's own TFLOP/s column on every GEMM row."""
    root, _ = imported
    m = _with_kernels(root)
    gemm = m[m.extra.map(lambda e: e["op"] == "gemm") & m.error.isna()]
    first = gemm[gemm.hardware == "v100-sxm2-16gb"].iloc[0]
    assert first.record["vertices"][0]["input_shapes"] == [[1760, 1760], [1760, 16]]
    assert first.flops == 2 * 1760 * 16 * 1760
    assert first.extra["transpose_a"] == "N" and first.record["vertices"][0]["op"] == "aten.mm.default"
    listed = gemm.extra.map(lambda e: e["listed_tflops"])
    assert ((gemm.flops / (gemm.runtime_ms * 1e9) / listed - 1).abs() < 1e-6).all()


def test_conv_flops_match_deepbench(imported):
    root, _ = imported
    m = _with_kernels(root)
    conv = m[m.extra.map(lambda e: e["op"] == "conv")]
    assert len(conv) > 100 and conv.error.isna().all()
    assert {r["vertices"][0]["kind"] for r in conv.record} == {"conv"}
    # Where DeepBench's output size is whole, its TFLOP/s is 2 N K C R S P Q / time, as ours.
    whole = conv[conv.extra.map(lambda e: float(e["P"]).is_integer() and float(e["Q"]).is_integer())]
    listed = whole.extra.map(lambda e: e["listed_tflops"])
    assert ((whole.flops / (whole.runtime_ms * 1e9) / listed - 1).abs() < 1e-3).all()


def test_fp16_tab_has_fp16_tensors(imported):
    root, _ = imported
    m = _with_kernels(root)
    t4 = m[(m.hardware == "t4") & m.error.isna()]
    assert {r["vertices"][0]["dtype"] for r in t4.record} == {"fp16"}
    assert {p["dtype"] for r in t4.record for p in r["inputs"]} == {"float16"}


def test_unreadable_row_is_kept_with_its_error(imported):
    root, _ = imported
    m = read_table("measurements", root)
    failed = m[m.error.notna()]
    assert len(failed) == 1
    assert failed.iloc[0].error.startswith("cannot build the GEMM")
    assert failed.iloc[0].runtime_ms > 0 and pd.isna(failed.iloc[0].subdiagram_hash)


def test_reimport_writes_the_same_ids(imported, subset):
    root, counts = imported
    before = read_table("measurements", root)
    assert deepbench.run(subset, root=root)["measurements"] == counts["measurements"]
    after = read_table("measurements", root)
    assert set(after.measurement_id) == set(before.measurement_id) and len(after) == len(before)


def test_no_results_files(tmp_path):
    with pytest.raises(UserError, match="no DeepBench results"):
        deepbench.run(tmp_path, root=tmp_path / "out")

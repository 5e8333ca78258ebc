"""The NeuSight importer on a small copy of the real data (same layout, a few hundred rows)."""
from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from costmodel.data.schema import measurement_id
from costmodel.data.shards import read_table
from costmodel.errors import UserError
from costmodel.data.importers import neusight

DATA = Path(__file__).resolve().parents[4].parent / "shared" / "data" / "neusight"
pytestmark = pytest.mark.skipif(
    not (DATA / "SOURCE_COMMIT.txt").is_file(),
    reason=f"NeuSight data not found at {DATA} (the shared data folder beside the repository)")

BMM = "kernels/bmm/p2.1.0/Tesla_T4.csv"
LINEAR = "kernels/linear/p2.1.0/NVIDIA_A100-PCIE-40GB.csv"
LN, VEC = "kernels/extra/ln.csv", "kernels/extra/vec.csv"
GRAPH = "label/NVIDIA_A100-PCIE-40GB/bert_large-inf-512-8"
BROKEN_LINE = 12  # the line of LN whose B we blank: NeuSight has no unbuildable row of its own


def _head(rel: str, dst: Path, lines: int) -> list[str]:
    text = (DATA / rel).read_text().splitlines(keepends=True)[:lines]
    (dst / rel).parent.mkdir(parents=True, exist_ok=True)
    (dst / rel).write_text("".join(text))
    return text


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("neusight")
    shutil.copy(DATA / "SOURCE_COMMIT.txt", src)
    _head(BMM, src, 200)
    _head(LINEAR, src, 150)
    ln = _head(LN, src, BROKEN_LINE)
    row = next(csv.reader([ln[-1]]))
    row[-3] = ""  # B
    with (src / LN).open("a", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerow(row)
    _head(VEC, src, 6)  # vec.csv repeats ln.csv: these 5 rows are skipped as duplicates
    for suffix in (".csv", ".json", "-fusion.json"):
        _head(GRAPH + suffix, src, 10_000)
    _head("label/NVIDIA_A100-PCIE-40GB/switchxl4-inf-512-1.json", src, 100)
    _head("model_configs/bert_large.json", src, 1000)
    return src


@pytest.fixture(scope="module")
def imported(subset, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("dataset")
    return root, neusight.run(subset, root=root)


def test_row_counts(imported, subset):
    root, counts = imported
    graph = _graph_nodes(subset / (GRAPH + ".csv"))
    measured = sum(1 for r in graph if float(r["latency"]) > 0)
    kernel_rows = 199 + 149 + (BROKEN_LINE - 1) + 1
    assert counts["skipped_duplicate_kernel_rows"] == 5
    assert counts["measurements"] == kernel_rows + measured + 3  # + three model-scope rows
    m = read_table("measurements", root)
    assert len(m) == counts["measurements"]
    assert m.measurement_id.is_unique
    assert (m.source == "neusight").all() and (m.licence == "MIT").all()
    assert set(m.source_commit) == {(DATA / "SOURCE_COMMIT.txt").read_text().strip()}
    assert counts["diagrams"] == 1 and counts["hardware"] == 3
    assert len(read_table("subdiagrams", root)) == counts["subdiagrams"]


def test_hardware_names(imported):
    root, _ = imported
    hw = read_table("hardware", root)
    expected = ["a100-pcie-40gb", "t4", "v100-pcie-32gb"]  # the extra/ln.csv rows are a V100's
    assert sorted(hw.hardware) == expected
    assert hw.descriptor_json.notna().all() and hw.profile_json.notna().all()
    assert sorted(set(read_table("measurements", root).hardware)) == expected


def _rows(subset: Path, rel: str):
    """(line, csv row) of a kernel file, as the importer numbers them."""
    with (subset / rel).open(newline="") as fh:
        reader = csv.DictReader(fh)
        for r in reader:
            yield reader.line_num, r


def _kernel(root: Path, rel: str, line: int, r: dict):
    """The measurement of one csv row (found by the id the importer gives it) and its kernel."""
    sub = neusight.kernel(r["OPName"], {c: int(r[c]) for c in "BMNK"})
    hw = neusight.hardware_name(r["Device"])[0]
    mid = measurement_id("neusight", hw, "kernel", sub.hash, None, None, (rel, line))
    m = read_table("measurements", root).set_index("measurement_id")
    return m.loc[mid], sub


def test_bmm_flops_and_cublas_kernel_name(imported, subset):
    root, _ = imported
    line, first = next(_rows(subset, BMM))
    b, m, n, k = (int(first[c]) for c in "BMNK")
    row, sub = _kernel(root, BMM, line, first)
    assert row.runtime_ms == float(first["Latency"])
    # NeuSight's bmm is (B, M, N) @ (B, N, K): N is the reduction.
    assert sub.vertices[0].input_shapes == ((b, m, n), (b, n, k))
    assert sub.flops == 2 * b * m * n * k == 2 * 13 * 27 * 15 * 29
    assert row.kernel_name == first["Kernel Name"] == "volta_sgemm_64x64_nn"
    extra = json.loads(row.extra_json)
    assert extra["grid"] == [1, 1, 13] and extra["kernels"] == ["volta_sgemm_64x64_nn"]
    assert row.framework_version == "2.1.0" and row.cuda_version == "12.1"


def test_gemm_shapes_match_the_cublas_grids(imported, subset):
    """Every sgemm launch tiles the output: grid x = ceil(columns / tile), y = ceil(rows / tile)."""
    root, _ = imported
    checked = 0
    for rel in (BMM, LINEAR):
        for line, r in _rows(subset, rel):
            tile = re.search(r"sgemm_(\d+)x(\d+)_", r["Kernel Name"])
            if not tile or "sliced" in r["Kernel Name"] or "splitK" in r["Kernel Name"]:
                continue
            row, sub = _kernel(root, rel, line, r)
            assert row.runtime_ms == float(r["Latency"])
            *_, rows, cols = sub.vertices[0].output_shapes[0]
            assert int(r["Grid x"]) == math.ceil(cols / int(tile[1]))
            assert int(r["Grid y"]) == math.ceil(rows / int(tile[2]))
            checked += 1
    assert checked > 100


def test_linear_is_input_b_m_n_through_weight_k_n(imported, subset):
    root, _ = imported
    line, first = next(_rows(subset, LINEAR))
    b, m, n, k = (int(first[c]) for c in "BMNK")
    row, sub = _kernel(root, LINEAR, line, first)
    stored = json.loads(read_table("subdiagrams", root).set_index("subdiagram_hash")
                        .loc[row.subdiagram_hash].subdiagram_json)
    assert stored["vertices"][0]["input_shapes"] == [[b, m, n], [k, n], [k]]
    assert sub.flops == 2 * b * m * n * k + b * m * k  # and the bias


def test_a_row_that_cannot_be_built_is_kept_with_its_error(imported):
    root, _ = imported
    m = read_table("measurements", root)
    failed = m[m.error.notna()]
    assert len(failed) == 1
    assert failed.iloc[0].error.startswith("cannot build ln")
    assert failed.iloc[0].runtime_ms > 0 and pd.isna(failed.iloc[0].subdiagram_hash)


def _graph_nodes(path: Path) -> list[dict]:
    """The csv rows that are tensor ops (not inputs, weights, the output or Python values)."""
    return [r for r in csv.DictReader(path.open())
            if r["dtype"] and r["op"] not in ("placeholder", "get_attr", "output")]


def test_model_rows_link_to_the_diagram(imported, subset):
    root, _ = imported
    m = read_table("measurements", root)
    models = m[m.scope == "model"]
    diagrams = read_table("diagrams", root).set_index("diagram_hash")
    linked = models[models.diagram_hash.notna()]
    assert len(linked) == 2
    assert sorted(json.loads(e).get("fusion", False) for e in linked.extra_json) == [False, True]
    for h in linked.diagram_hash:
        assert diagrams.loc[h].n_vertices == len(_graph_nodes(subset / (GRAPH + ".csv")))
        assert json.loads(diagrams.loc[h].config_json)["num_layer"] == 24
    e2e = json.loads((subset / (GRAPH + ".json")).read_text())["e2e_latency"]
    assert e2e in set(linked.runtime_ms)
    lonely = models[models.diagram_hash.isna()]
    assert [json.loads(e)["workload"] for e in lonely.extra_json] == ["switchxl4-inf-512-1"]


def test_measured_vertices_are_kernels_of_the_diagram(imported, subset):
    root, _ = imported
    m = read_table("measurements", root)
    graph = m[m.diagram_hash.notna() & (m.scope == "kernel")]
    extras = [json.loads(e) for e in graph.extra_json]
    assert all(e["measured_alone"] for e in extras)
    by_node = dict(zip((e["fx_node"] for e in extras), graph.subdiagram_hash))
    subs = read_table("subdiagrams", root).set_index(["subdiagram_hash", "diagram_hash"])
    h = graph.diagram_hash.iloc[0]
    query = subs.loc[(by_node["bert_encoder_layer_0_attention_self_query"], h)]
    assert list(query.kinds) == ["matmul"]
    assert query.flops == 2 * 8 * 512 * 1024 * 1024 + 8 * 512 * 1024
    assert list(subs.loc[(by_node["contiguous"], h)].kinds) == ["copy"]  # of a permuted tensor
    vertices = read_table("vertices", root)
    assert set(vertices.kind) <= {"matmul", "softmax", "layer_norm", "gelu", "activation", "add",
                                  "mul", "elementwise", "embedding", "copy", "fill", "free"}


def test_reimport_writes_the_same_ids(imported, subset):
    root, counts = imported
    before = read_table("measurements", root)
    again = neusight.run(subset, root=root)
    assert again["measurements"] == counts["measurements"]
    after = read_table("measurements", root)
    assert len(after) == len(before)
    assert set(after.measurement_id) == set(before.measurement_id)
    assert len(read_table("measurements", root, dedupe=False)) == 2 * len(before)


def test_not_a_neusight_folder(tmp_path):
    with pytest.raises(UserError, match="SOURCE_COMMIT"):
        neusight.run(tmp_path, root=tmp_path / "out")

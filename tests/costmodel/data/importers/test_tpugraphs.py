"""The TpuGraphs importer: the wire-format decoder, the two real `.pb` files from tpu_graphs'
tests, and the release's `.npz` layout (on small synthetic files: the release is not reachable
from here)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from costmodel.data.shards import read_table
from costmodel.errors import UserError
from costmodel.data.importers import tpugraphs
from costmodel.data.protobuf import (Field, Message, WireError, decode, read_varint,
                                     signed64)

TESTDATA = Path(__file__).resolve().parents[4].parent / "shared" / "data" / "tpugraphs_testdata"
LAYOUT_PB = TESTDATA / "module_tuning_data_layout.pb"
OP_PB = TESTDATA / "op_tuning_data.pb"
needs_data = pytest.mark.skipif(
    not LAYOUT_PB.is_file() or not OP_PB.is_file(),
    reason=f"TpuGraphs test data not found at {TESTDATA} (the shared data folder beside the repository)")


# ---- a tiny protobuf encoder, for hand-made messages ----------------------------------------

def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative ints are ten-byte two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def record(number: int, value: int | bytes, wire: int | None = None) -> bytes:
    if isinstance(value, bytes):
        return varint(number << 3 | 2) + varint(len(value)) + value
    if wire == 1:
        return varint(number << 3 | 1) + struct.pack("<q", value)
    return varint(number << 3 | 0) + varint(value)


def packed(number: int, values: list[int]) -> bytes:
    return record(number, b"".join(varint(v) for v in values))


INNER = Message("Inner", {1: Field("dims", "int64", True), 2: Field("name", "string")})
OUTER = Message("Outer", {1: Field("inner", INNER, True), 2: Field("flag", "bool"),
                          3: Field("ratio", "double"), 4: Field("size", "uint64"),
                          5: Field("child", INNER)})


# ---- wire format -------------------------------------------------------------------------------

def test_varints():
    assert read_varint(b"\x01", 0) == (1, 1)
    assert read_varint(b"\xac\x02", 0) == (300, 2)
    assert read_varint(b"\x00\xac\x02", 1) == (300, 3)
    raw, end = read_varint(varint(-1), 0)
    assert end == 10 and signed64(raw) == -1
    with pytest.raises(WireError, match="truncated"):
        read_varint(b"\xac", 0)


def test_decode_nested_packed_and_unpacked():
    first = packed(1, [3, 0, -1]) + record(2, "a".encode())
    second = record(1, 7) + record(1, 8) + record(99, b"skipped") + record(2, "b".encode())
    msg = (record(1, first) + record(1, second) + record(2, 1) + record(77, 5)
           + record(3, struct.unpack("<q", struct.pack("<d", 0.25))[0], wire=1) + record(4, 2**40))
    out = decode(msg, OUTER)
    assert out["inner"] == [{"dims": [3, 0, -1], "name": "a"}, {"dims": [7, 8], "name": "b"}]
    assert out["flag"] is True and out["ratio"] == 0.25 and out["size"] == 2**40
    assert out["child"] is None  # absent message; absent scalars take proto3 defaults
    assert decode(b"", OUTER) == {"inner": [], "flag": False, "ratio": 0.0, "size": 0, "child": None}


def test_decode_rejects_bad_bytes():
    with pytest.raises(WireError, match="wire type"):
        decode(record(2, b"x"), OUTER)  # a bool sent as length-delimited
    with pytest.raises(WireError, match="announced"):
        decode(record(1, b"\x08\x01")[:-1], OUTER)  # nested message cut short
    with pytest.raises(WireError, match="unsupported wire type"):
        decode(varint(1 << 3 | 3), OUTER)


# ---- a hand-made TuningData: one module computing dot(parameter, parameter) -----------------

def shape(dims: list[int], element_type: int = 11) -> bytes:
    return record(2, element_type) + packed(3, dims)


def instruction(iid: int, name: str, opcode: str, dims: list[int], operands=(), extra=b"") -> bytes:
    body = record(1, name.encode()) + record(2, opcode.encode()) + record(3, shape(dims))
    body += record(35, iid) + (packed(36, list(operands)) if operands else b"") + extra
    return body


def hand_made_tuning_data() -> bytes:
    dot_dims = record(30, packed(1, [1]) + packed(2, [0]))  # lhs dim 1 with rhs dim 0
    comp = (record(1, b"main") + record(5, 1) + record(6, 3)
            + record(2, instruction(1, "p0", "parameter", [4, 8]))
            + record(2, instruction(2, "p1", "parameter", [8, 16], extra=record(9, 1)))
            + record(2, instruction(3, "dot.1", "dot", [4, 16], (1, 2), dot_dims)))
    module = record(1, b"dot_module") + record(2, b"main") + record(6, 1) + record(3, comp)
    tile = record(1, packed(2, [4, 16]))  # HloOpConfig: tile_size_config.output_bounds
    runs = [record(1, tile) + record(4, record(4, 5000)) + record(5, 1),  # default, 5000 ns
            record(1, tile) + record(4, record(4, 7000)),
            record(1, tile) + record(3, 1)]  # failed
    mtd = record(1, module) + record(2, 42) + b"".join(record(3, r) for r in runs)
    return record(1, mtd)


def test_hand_made_tuning_data(tmp_path):
    pb = tmp_path / "tiny.pb"
    pb.write_bytes(hand_made_tuning_data())
    counts = tpugraphs.run(pb, root=tmp_path / "data")
    assert counts["diagrams"] == 1 and counts["measurements"] == 3 and counts["hardware"] == 1
    v = read_table("vertices", tmp_path / "data")
    assert v["op"].tolist() == ["xla.dot"] and v["kind"].tolist() == ["matmul"]
    assert v["flops"].tolist() == [2 * 4 * 16 * 8]
    assert v["bytes_read"].tolist() == [(4 * 8 + 8 * 16) * 4] and v["bytes_written"].tolist() == [4 * 16 * 4]
    m = read_table("measurements", tmp_path / "data").sort_values("runtime_ms")
    assert m["runtime_ms"].tolist()[:2] == [0.005, 0.007] and m["runtime_ms"].isna().sum() == 1
    assert m["error"].notna().sum() == 1 and set(m["scope"]) == {"config"}
    assert json.loads(m["kernel_config_json"].iloc[0])["output_bounds"] == [4, 16]
    assert json.loads(m["extra_json"].iloc[0])["default_runtime_ms"] == 0.005


@pytest.mark.parametrize("payload", [b"\x0a\xff\xff\xff\x0f", b"\x0b", hand_made_tuning_data()[:-7]])
def test_corrupt_pb_is_a_user_error_naming_the_file(tmp_path, payload):
    bad = tmp_path / "broken.pb"
    bad.write_bytes(payload)
    with pytest.raises(UserError, match="broken.pb"):
        tpugraphs.run(bad, root=tmp_path / "data")


# ---- the real files -------------------------------------------------------------------------

@needs_data
def test_layout_file(tmp_path):
    counts = tpugraphs.run(LAYOUT_PB, root=tmp_path)
    assert counts["diagrams"] == 1 and counts["measurements"] == 122
    m = read_table("measurements", tmp_path)
    assert len(m) == 122 and set(m["hardware"]) == {"tpu-v3"} and set(m["scope"]) == {"config"}
    ok = m[m["error"].isna()]
    assert len(ok) > 100 and (ok["runtime_ms"] > 0).all()
    assert m.loc[m["error"].notna(), "runtime_ms"].isna().all()
    assert sum(json.loads(e)["is_default"] for e in m["extra_json"]) == 1
    config = json.loads(m["kernel_config_json"].iloc[0])
    assert config["collection"] == "layout" and len(config["nodes"]) == 62
    d = read_table("diagrams", tmp_path)
    assert m["diagram_hash"].unique().tolist() == d["diagram_hash"].tolist()
    v = read_table("vertices", tmp_path)
    conv = v[v["op"] == "xla.convolution"]
    assert len(conv) > 10 and (conv["flops"] > 0).all() and set(conv["dtype"]) == {"bf16"}
    assert read_table("hardware", tmp_path)["hardware"].tolist() == ["tpu-v3"]


@needs_data
def test_op_tuning_file(tmp_path):
    counts = tpugraphs.run(OP_PB, root=tmp_path)
    assert counts["diagrams"] == 15
    d = read_table("diagrams", tmp_path)
    assert len(d) == 15 and "fusion.232" in set(d["model"])
    v = read_table("vertices", tmp_path)
    assert {"xla.fusion", "xla.copy"} <= set(v["op"])
    m = read_table("measurements", tmp_path)
    assert len(m) == counts["measurements"] > 15 and set(m["diagram_hash"]) == set(d["diagram_hash"])
    assert (m.loc[m["error"].isna(), "runtime_ms"] > 0).all()
    assert all(json.loads(c)["collection"] == "tile" for c in m["kernel_config_json"])


@needs_data
def test_reimport_gives_identical_ids(tmp_path):
    first = tpugraphs.run(TESTDATA, root=tmp_path / "a")
    tpugraphs.run(TESTDATA, root=tmp_path / "b")
    ids = [set(read_table("measurements", tmp_path / r)["measurement_id"]) for r in ("a", "b")]
    assert ids[0] == ids[1] and len(ids[0]) == first["measurements"]
    again = tpugraphs.run(TESTDATA, root=tmp_path / "a")
    assert sum(again.values()) == 0  # already there: nothing written twice


# ---- the npz release layout, on a synthetic graph ---------------------------------------------
# Nodes: 0 parameter f32[4,8], 1 parameter f32[8,16], 2 dot f32[4,16], 3 constant f32[],
# 4 broadcast f32[4,16], 5 add f32[4,16] (the root). edge [u, v]: u reads the output of v.
OPCODES = [63, 63, 34, 24, 13, 2]
SHAPES = [(4, 8), (8, 16), (4, 16), (), (4, 16), (4, 16)]
EDGES = [[2, 0], [2, 1], [4, 3], [5, 2], [5, 4]]


def node_feat() -> np.ndarray:
    feat = np.zeros((len(OPCODES), 140), dtype=np.float32)
    for u, dims in enumerate(SHAPES):
        feat[u, 13] = 1  # shape_element_type_is_f32
        feat[u, 21:21 + len(dims)] = dims
        feat[u, 27], feat[u, 28] = sum(dims), np.prod(dims)
        feat[u, 134:134 + len(dims)] = list(range(len(dims) - 1, -1, -1))
    feat[5, 0] = 1  # is_root
    return feat


def write_npz(folder: Path, **arrays) -> Path:
    folder.mkdir(parents=True)
    path = folder / "toy.npz"
    np.savez(path, node_feat=node_feat(), node_opcode=np.array(OPCODES, dtype=np.int32),
             edge_index=np.array(EDGES, dtype=np.int32), **arrays)
    return path


def test_npz_tile(tmp_path):
    config_feat = np.zeros((3, 24), dtype=np.float32)
    config_feat[:, 8:10] = [[4, 16], [2, 16], [1, 8]]  # output_bounds
    write_npz(tmp_path / "npz" / "tile" / "xla" / "train", config_feat=config_feat,
              config_runtime=np.array([1000, 2000, 0], dtype=np.int64),
              config_runtime_normalizers=np.array([1000, 1000, 1000], dtype=np.int64))
    counts = tpugraphs.run(tmp_path / "npz", root=tmp_path / "data")
    assert counts["diagrams"] == 1 and counts["measurements"] == 3
    v = read_table("vertices", tmp_path / "data")
    assert v["kind"].tolist() == ["matmul", "copy", "add"]
    assert v["flops"].tolist() == [2 * 4 * 16 * 8, 0, 64]
    d = read_table("diagrams", tmp_path / "data")
    config = json.loads(d["config_json"].iloc[0])
    assert config["collection"] == "tile:xla" and config["split"] == "train" and d["model"].tolist() == ["toy"]
    m = read_table("measurements", tmp_path / "data").sort_values("runtime_ms")
    assert m["runtime_ms"].tolist()[:2] == [0.001, 0.002] and m["error"].notna().sum() == 1
    assert json.loads(m["kernel_config_json"].iloc[1])["output_bounds"] == [2, 16]
    assert json.loads(m["extra_json"].iloc[0])["default_runtime_ms"] == 0.001
    p = read_table("propagators", tmp_path / "data")
    assert set(p.loc[p["role"] == "input", "propagator"]) == {"n0", "n1"}


def test_npz_layout(tmp_path):
    feat = -np.ones((2, 2, 18), dtype=np.float32)
    feat[:, :, 0:2] = [[[1, 0], [1, 0]], [[0, 1], [1, 0]]]  # output layout of nodes 2 and 5
    write_npz(tmp_path / "npz" / "layout" / "xla" / "random" / "valid",
              node_config_ids=np.array([2, 5], dtype=np.int32), node_config_feat=feat,
              config_runtime=np.array([5_000_000, 6_000_000], dtype=np.int64),
              node_splits=np.array([[0]], dtype=np.int64))
    counts = tpugraphs.run(tmp_path / "npz", root=tmp_path / "data")
    assert counts["measurements"] == 2
    m = read_table("measurements", tmp_path / "data").sort_values("runtime_ms")
    assert m["runtime_ms"].tolist() == [5.0, 6.0]
    assert json.loads(m["kernel_config_json"].iloc[1])["nodes"] == {"n2": [[0, 1], [], []],
                                                                    "n5": [[1, 0], [], []]}
    assert json.loads(read_table("diagrams", tmp_path / "data")["config_json"].iloc[0])[
        "collection"] == "layout:xla:random"


def test_npz_with_wrong_arrays_is_a_user_error(tmp_path):
    path = tmp_path / "odd.npz"
    np.savez(path, node_feat=np.zeros((2, 140)), node_opcode=np.zeros(2))
    with pytest.raises(UserError, match="odd.npz.*missing"):
        tpugraphs.run(path, root=tmp_path / "data")

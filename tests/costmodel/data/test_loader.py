import json

from torch_geometric.loader import DataLoader

from costmodel.data.schema import Provenance, measurement_row
from costmodel.data.shards import ShardWriter
from costmodel.hardware import load_profile
from costmodel.data.loader import fingerprint, load_frames
from costmodel.models.examples import KernelDataset

from .test_shards import write_some


def test_frames_and_pyg_examples(tmp_path, capture):
    write_some(tmp_path / "data", capture, error_at=1)
    with ShardWriter(tmp_path / "data", source="host") as w:
        w.add("hardware", {"hardware": "cpu-test", "kind": "cpu", "display_name": "test",
                           "source": "host", "profile_json": json.dumps(load_profile("a100").to_dict())})
    frames = load_frames(tmp_path / "data")
    assert set(frames) >= {"measurements", "subdiagrams", "hardware"}
    ds = KernelDataset(tmp_path / "cache", data=tmp_path / "data", progress=False)
    assert len(ds) == 4  # five measurements, one failed
    assert ds[0].y.shape == (1,) and ds[0].hardware == "cpu-test"
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch.num_graphs == 4 and batch.hw.shape[0] == 4


def test_stale_cache_is_rebuilt(tmp_path, capture):
    write_some(tmp_path / "data", capture, n=2)
    with ShardWriter(tmp_path / "data", source="host") as w:
        w.add("hardware", {"hardware": "cpu-test", "kind": "cpu", "display_name": "t", "source": "host",
                           "profile_json": json.dumps(load_profile("t4").to_dict())})
    before = fingerprint(tmp_path / "data")
    assert len(KernelDataset(tmp_path / "cache", data=tmp_path / "data", progress=False)) == 2
    d = capture("bert-base", 1, 32)
    with ShardWriter(tmp_path / "data", source="host") as w:
        from costmodel.data.schema import subdiagram_row
        from costmodel.ir.plan import eager_partition

        sub = eager_partition(d)[7]
        w.add("subdiagrams", subdiagram_row(sub, "host", d.hash))
        w.add("measurements", measurement_row(Provenance("host", "x", "Apache-2.0"), hardware="cpu-test",
                                              runtime_ms=2.0, subdiagram_hash=sub.hash, key="new"))
    assert fingerprint(tmp_path / "data") != before
    assert len(KernelDataset(tmp_path / "cache", data=tmp_path / "data", progress=False)) == 3
    assert len(list((tmp_path / "cache" / "processed").glob("kernels-*.pt"))) == 2


def test_stored_diagrams_rebuild():
    """A diagram written as rows reads back with its vertices, shapes and work."""
    from pathlib import Path

    from costmodel.data.loader import diagrams
    from costmodel.data.schema import diagram_rows
    from costmodel.data.shards import ShardWriter
    from costmodel.ir.zoo import capture_model

    import tempfile

    d = capture_model("scgpt", 1, 16, overrides={"n_layers": 1, "d_model": 32, "n_heads": 2, "d_ff": 32})
    with tempfile.TemporaryDirectory() as tmp:
        with ShardWriter(Path(tmp), source="host") as w:
            w.add_rows(diagram_rows(d, "host"))
        [back] = diagrams(Path(tmp)).values()
    assert [v.name for v in back.vertices] == [v.name for v in d.vertices]
    assert back.flops == d.flops and [v.output_shapes for v in back.vertices] == [v.output_shapes for v in d.vertices]
    assert sum(v.bytes_read for v in back.vertices) == sum(v.bytes_read for v in d.vertices)


def test_shipped_profile_wins_over_a_stored_copy(tmp_path, capture):
    """A stored profile is a copy from import time: for hardware the catalogue knows, training
    reads the catalogue's figures (those a prediction is priced with); a stored profile serves only
    hardware the catalogue lacks."""
    import dataclasses

    from costmodel.data.loader import hardware_profiles

    write_some(tmp_path / "data", capture, n=2)
    stale = dataclasses.replace(load_profile("p100"), shared_int_lanes_per_unit=0, boost_clock_mhz=None)
    with ShardWriter(tmp_path / "data", source="host") as w:
        w.add("hardware", {"hardware": "cpu-test", "kind": "cpu", "display_name": "t", "source": "host",
                           "profile_json": json.dumps(load_profile("t4").to_dict())})
        w.add("hardware", {"hardware": "p100-pcie-16gb", "kind": "gpu", "display_name": "P100",
                           "source": "host", "profile_json": json.dumps(stale.to_dict())})
        w.add("measurements", measurement_row(Provenance("host", "x", "Apache-2.0"), hardware="p100-pcie-16gb",
                                              runtime_ms=1.0, key="p100"))
    profiles = hardware_profiles(tmp_path / "data")
    assert profiles["p100-pcie-16gb"] == load_profile("p100")
    assert profiles["p100-pcie-16gb"].descriptor()["shared_int_fraction"] == 1.0
    assert profiles["cpu-test"] == load_profile("t4")  # unknown to the catalogue: the stored copy

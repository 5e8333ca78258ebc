import pytest
import torch
from torch_geometric.loader import DataLoader

from costmodel.models import features
from costmodel.models.features import CONFIG_DIM, EDGE_DIM, NODE_DIM, ROOFLINE_DIM, to_data
from costmodel.hardware import load_profile
from costmodel.ir.plan import Fuse, KernelConfig, Plan, eager_partition


def test_single_op_kernel_is_a_graph(capture):
    d = capture("bert-base", 1, 32)
    sub = next(s for s in eager_partition(d) if s.kinds == ("matmul",))
    data = to_data(sub, load_profile("a100"))
    # The matmul, its three inputs (activation, weight, bias) and its output.
    assert data.x.shape == (5, NODE_DIM)
    assert data.edge_index.shape == (2, 4) and data.edge_attr.shape == (4, EDGE_DIM)
    assert data.edge_index[1, :3].tolist() == [0, 0, 0] and data.edge_index[0, 3] == 0
    assert data.config.shape == (1, CONFIG_DIM) and data.config.abs().sum() == 0
    assert data.roofline.shape == (1, ROOFLINE_DIM)
    assert torch.isfinite(data.x).all() and torch.isfinite(data.roofline).all()


def test_hardware_and_config_enter_as_graph_attributes(capture):
    d = capture("bert-base", 1, 32)
    sub = eager_partition(d)[5]
    a100, t4 = to_data(sub, load_profile("a100")), to_data(sub, load_profile("t4"))
    assert a100.hw.shape == t4.hw.shape and not torch.equal(a100.hw, t4.hw)
    tiled = to_data(sub, load_profile("a100"), KernelConfig(64, 64, 32, 4, 3))
    assert tiled.config[0, 0] == 1 and torch.equal(tiled.x, a100.x)


def test_fused_kernel_has_internal_edges(capture):
    d = capture("bert-base", 1, 32)
    fc1 = [v.name for v in d.vertices if v.kind == "matmul"][4]
    gelu = next(v.name for v in d.vertices if v.kind == "gelu")
    [k] = [k for k in Plan((Fuse((fc1, gelu)),)).kernels(d) if len(k.subdiagram.vertices) > 1]
    data = to_data(k.subdiagram, load_profile("h100"))
    n = len(k.subdiagram.vertices)
    vertex_to_vertex = ((data.edge_index[0] < n) & (data.edge_index[1] < n)).sum()
    assert vertex_to_vertex == n - 1  # a chain: matmul -> views -> gelu


def test_pyg_loader_batches_kernels(capture):
    d = capture("gpt2", 1, 32)
    hw = load_profile("a100")
    graphs = [to_data(s, hw) for s in eager_partition(d)[:40]]
    batch = next(iter(DataLoader(graphs, batch_size=16)))
    assert batch.num_graphs == 16
    assert batch.hw.shape[0] == 16 and batch.config.shape == (16, CONFIG_DIM)
    assert batch.x.shape[0] == sum(g.num_nodes for g in graphs[:16])
    assert int(batch.edge_index.max()) < batch.x.shape[0]
    assert len(batch.kernel_hash) == 16


def test_xla_configs_have_their_own_place():
    from costmodel.models.features import CONFIG_DIM, KERNEL_CONFIG_DIM, XLA_CONFIG_DIM, config_vector, xla_vector

    assert xla_vector(None) == [0.0] * XLA_CONFIG_DIM == xla_vector({"collection": "other"})
    tile = xla_vector({"collection": "tile", "output_bounds": [4, 32], "kernel_bounds": [16, 32],
                       "input_bounds": [], "iteration_bounds": []})
    other = xla_vector({"collection": "tile", "output_bounds": [4, 1], "kernel_bounds": [16, 32],
                        "input_bounds": [], "iteration_bounds": []})
    assert tile[:2] == [1.0, 0.0] and tile != other
    layout = xla_vector({"collection": "layout", "nodes": {"a": [[1, 0], [0, 1]], "b": [[]]}})
    assert layout[:2] == [0.0, 1.0] and layout[3] == pytest.approx(1 / 3) and layout[5] == pytest.approx(1 / 3)
    assert len(config_vector(KernelConfig(64, 64, 32), {"collection": "tile"})) == CONFIG_DIM
    assert config_vector(None)[:KERNEL_CONFIG_DIM] == [0.0] * KERNEL_CONFIG_DIM


def test_hardware_inputs_by_name():
    from costmodel.models.features import RATIOS, hardware_columns

    keys = list(load_profile("a100").descriptor())
    assert [keys[i] for i in hardware_columns("ratios")] == list(RATIOS)
    assert len(hardware_columns("all")) == len(keys)
    with pytest.raises(ValueError, match="ratios"):
        hardware_columns("identity")


def test_time_weights_favour_big_kernels():
    import torch

    from costmodel.models.features import sample_weights

    y = torch.log(torch.tensor([0.01, 0.1, 1.0, 10.0]))
    w = sample_weights(y, "time")
    assert torch.all(w[1:] > w[:-1]) and w.mean().item() == pytest.approx(1.0)
    assert torch.equal(sample_weights(y, "none"), torch.ones(4))


def test_machine_fill_counts_waves_against_the_machine(capture):
    """The biggest output in 128 x 128 tiles per compute unit, and the idle part of the last wave."""
    import math

    from costmodel.models.features import FILL_DIM, machine_fill

    d = capture("bert-base", 8, 128)
    sub = next(s for s in eager_partition(d) if s.kinds == ("matmul",))  # 1024 x 768 fp32
    a100, t4 = load_profile("a100"), load_profile("t4")
    fill = machine_fill(sub, a100)
    assert len(fill) == FILL_DIM == to_data(sub, a100).fill.shape[1]
    tiles = 1024 * 768 / (128 * 128)  # 48 tiles on 108 SMs: half the machine idles
    assert math.isclose(2 ** fill[1], tiles / a100.compute_units, rel_tol=1e-3)
    assert math.isclose(fill[2], math.ceil(tiles / 108) / (tiles / 108), rel_tol=1e-3)
    # The same kernel on a narrower GPU: more work per unit, more waves, the L2 smaller.
    narrow = machine_fill(sub, t4)
    assert narrow[0] > fill[0] and narrow[1] > fill[1] and narrow[3] > fill[3]


def test_a_batch_built_from_the_kernels_equals_the_collated_graphs(capture):
    """Prediction batches kernels without a graph each (`to_batch`); training collates graphs."""
    from torch_geometric.data import Batch

    from costmodel.models.features import to_batch

    d = capture("bert-base", 2, 32)
    fc1 = [v.name for v in d.vertices if v.kind == "matmul"][4]
    gelu = next(v.name for v in d.vertices if v.kind == "gelu")
    fused = [k.subdiagram for k in Plan((Fuse((fc1, gelu)),)).kernels(d)]
    tile = KernelConfig(64, 64, 32, 4, 3)
    kernels = [(s, tile if i % 4 == 0 else None) for i, s in enumerate([*fused, *eager_partition(d)])]
    assert any(len(s.vertices) > 1 for s, _ in kernels)
    hw = load_profile("t4")
    built = to_batch(kernels, hw)
    collated = Batch.from_data_list([to_data(s, hw, c) for s, c in kernels])
    for key in ("x", "edge_index", "edge_attr", "hw", "config", "roofline", "fill", "batch", "ptr"):
        assert built[key].dtype == collated[key].dtype, key
        assert torch.equal(built[key], collated[key]), key
    assert built.kernel_hash == collated.kernel_hash and built.num_graphs == len(kernels)
    empty = to_batch([], hw)
    assert empty.x.shape == (0, NODE_DIM) and empty.hw.shape[0] == 0


def test_the_feature_code_hash_reads_code_not_comments():
    code = '''
def f(x):
    """Twice x."""
    return 2 * x  # doubled
'''
    explained = '''
def f(x):
    """Twice x, as the rule book says: a longer docstring."""

    # a comment on its own line
    return 2 * x
'''
    changed = code.replace("2 * x", "3 * x")
    assert features.syntax(code) == features.syntax(explained)
    assert features.syntax(code) != features.syntax(changed)
    assert features.syntax("    def g():\n        return 1\n") == features.syntax("def g():\n    return 1\n")

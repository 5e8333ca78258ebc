import torch
from torch_geometric.loader import DataLoader

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

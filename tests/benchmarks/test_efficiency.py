"""benchmarks/efficiency.py --by duration: each matmul kernel lands in the decade of its
roofline compute time (clamped to the table's ends), each cell the median fraction of the peak."""
import math

import torch
from torch_geometric.data import Data

from benchmarks.efficiency import DECADES, by_duration
from costmodel.models import features


def _kernel(kind: str, compute_s: float, measured_s: float, hardware: str, source: str) -> Data:
    x = torch.zeros(1, features.NODE_DIM)
    x[0, features.NODE_TYPES.index("vertex")] = 1.0
    x[0, len(features.NODE_TYPES) + features.OP_KINDS.index(kind)] = 1.0
    roofline = torch.tensor([[math.log10(compute_s), -9.0, -5.0, math.log10(compute_s)]])
    return Data(x=x, roofline=roofline, y=torch.tensor([math.log(measured_s * 1e3)]),
                hardware=hardware, source=source)


def test_by_duration_bins_matmuls_by_their_time_at_peak(capsys):
    graphs = [_kernel("matmul", 2e-3, 4e-3, "t4", "a"), _kernel("matmul", 3e-3, 4e-3, "t4", "a"),
              _kernel("matmul", 5e-3, 6e-3, "t4", "a"),  # 1e-3 s: fractions 0.5, 0.75, 0.83
              _kernel("matmul", 5.0, 10.0, "t4", "a"),  # past the last decade: counted there
              _kernel("matmul", 2e-3, 2e-3, "t4", "b"),  # another source, its own row
              _kernel("add", 2e-3, 1e-1, "t4", "a")]  # not a matmul: left out
    assert by_duration(graphs, "", "here") == 0
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| t4")}
    assert set(rows) == {"| t4 (a)", "| t4 (b)"}
    cells = dict(zip(DECADES, rows["| t4 (a)"]))
    assert cells[-3] == "0.75 (3)" and cells[-1].startswith("0.50 (1)") and cells[-2] == "-"
    assert by_duration(graphs, "b", "here") == 0
    assert "t4 (a)" not in capsys.readouterr().out

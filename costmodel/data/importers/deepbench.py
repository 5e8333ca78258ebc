"""Import Baidu DeepBench's results (github.com/baidu-research/DeepBench, Apache-2.0).

The folder holds one csv per spreadsheet tab: `results_<train|inference...>_DeepBench_<machine>__
<tab>.csv` with sections (dense GEMM, sparse GEMM, convolution, RNNs, all-reduce) under one
precision line, and `..._Specs.csv` with the machine's software versions. Dense GEMMs become
single-op `aten.mm` kernels (C[M, N] = A[M, K] B[K, N]; the transposes are kept in extra_json:
they change the kernel cuBLAS runs, not the work), convolutions single-op `aten.convolution`
kernels (input (N, C, H, W), filters (K, C, R, S); forward time, the backward times in
extra_json). Only the precisions our dtypes express are imported: fp32, fp16 inputs with fp16
(tensor-core) math, and fp16 inputs with fp32 math (P100 "pseudo FP16": dtype fp32, fp16
tensors). Int8 tabs, sparse GEMMs, RNNs and all-reduce are counted as skipped.

The folder names no commit: rows carry source_commit "unknown".
"""
from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from costmodel.ir.capture import single_op
from costmodel.data.schema import DATA_DIR, Provenance, dumps, hardware_row, measurement_row
from costmodel.data.shards import RowSink, ShardWriter
from costmodel.errors import UserError
from costmodel.data.importers import hardware_name

SOURCE = "deepbench"
LICENCE = "Apache-2.0"
ORIGIN = "github.com/baidu-research/DeepBench"
COMMIT = "unknown"

aten = torch.ops.aten

# DeepBench's machine names -> the device name torch would print, where one is certain enough
# to pick a profile, else our hardware name. The P100 ran in an X99 workstation (a PCIe card;
# its memory size is not stated: the 12 GB card differs only in bandwidth, 549 vs 732 GB/s).
# The V100 is a DGX-1's (SXM2: 300 W, 1530 MHz); DGX-1 shipped 16 GB cards first (assumed).
_MACHINES = {
    "NV_T4": ("Tesla T4", "gpu"), "NV_P100": ("Tesla P100-PCIE-16GB", "gpu"),
    "NV_V100": ("Tesla V100-SXM2-16GB", "gpu"), "NV_1080Ti": ("gtx-1080ti", "gpu"),
    "NV_TitanX_Pascal": ("titan-x-pascal", "gpu"), "NV_TitanXp": ("titan-xp", "gpu"),
    "NV_TitanX": ("gtx-titan-x-maxwell", "gpu"), "NV_M40": ("tesla-m40", "gpu"),
    "AMD_MI25": ("radeon-instinct-mi25", "gpu"), "AMD_VegaFE": ("radeon-vega-frontier", "gpu"),
    "IA_KNL7250": ("xeon-phi-7250", "cpu"), "Raspberry_Pi_3": ("raspberry-pi-3", "cpu"),
    "iPhone_6": ("iphone-6", "cpu"), "iPhone_7": ("iphone-7", "cpu"),
}
_NOTES = {"NV_P100": "DeepBench names it 'NVIDIA Tesla P100' in an X99 workstation (PCIe); "
                     "16 GB assumed",
          "NV_V100": "DeepBench's V100 is a DGX-1 card (SXM2); 16 GB assumed"}
_FILE = re.compile(r"results_.*?DeepBench_(?P<machine>.+?)__(?P<tab>.+)\.csv")
_SECTIONS = (("Dense Matrix Multiplication", "gemm"), ("Sparse Matrix Multiplication", "sparse"),
             ("Convolution", "conv"), ("Recurrent Layers", "rnn"), ("All-Reduce", "allreduce"))
# Header cells -> our names (lowercased, spaces squeezed; DeepBench's tabs differ in spelling).
_CONV_COLUMNS = {"w": "W", "h": "H", "c": "C", "n": "N", "k": "K", "s": "S", "r": "R",
                 "pad_w": "pad_w", "pad_h": "pad_h", "horizontal stride": "stride_w",
                 "vertical stride": "stride_h", "forward": "fwd", "wrt inputs": "bwd_inputs",
                 "wrt parameters": "bwd_params", "p": "P", "q": "Q",
                 "forward algorithm": "algorithm", "fwd teraflops": "tflops",
                 "fwd gigaflops": "gflops"}
_GEMM_COLUMNS = {"m": "M", "n": "N", "k": "K", "a transpose": "ta", "b transpose": "tb",
                 "time": "fwd", "source": "application", "teraflops": "tflops",
                 "gigaflops": "gflops"}


def run(path: Path, *, root: Path = DATA_DIR) -> dict[str, int]:
    """Import a DeepBench csv folder into the dataset at `root`; rows written per table, plus
    `skipped_*` counts of what was left out on purpose."""
    path = Path(path)
    folder = path / "csv" if (path / "csv").is_dir() else path
    files = sorted(f for f in folder.glob("*.csv") if _FILE.fullmatch(f.name)
                   and not f.name.endswith("__Specs.csv"))
    if not files:
        raise UserError(f"no DeepBench results csv files in {str(folder)!r}")
    prov = Provenance(SOURCE, COMMIT, LICENCE, ORIGIN)
    machines: dict[str, tuple[bool, str, str]] = {}  # hardware -> (profiled, kind, display name)
    with ShardWriter(root, source=SOURCE) as writer:
        sink = RowSink(writer)
        sink.counts["skipped_kernel_lists"] += sum(1 for f in folder.glob("DeepBenchKernels_*.csv"))
        for f in tqdm(files, desc="deepbench", unit="file", file=sys.stderr, disable=None):
            machine = _FILE.fullmatch(f.name)["machine"]
            name, kind = _MACHINES.get(machine, (machine, "gpu"))
            hw, profiled = hardware_name(name)
            specs = _specs(folder, f.name)
            display = next((specs[k] for k in ("GPU Model", "CPU Model", "CPU") if specs.get(k)),
                           machine)
            before = sink.counts["measurements"]
            _import_file(f, f.relative_to(path).as_posix(), hw, machine, specs, prov, sink)
            if sink.counts["measurements"] > before:  # a machine with only skipped tabs is left out
                machines.setdefault(hw, (profiled, kind, display))
        for hw, (profiled, kind, display) in sorted(machines.items()):
            sink.add("hardware", hardware_row(hw, SOURCE, profiled=profiled, kind=kind,
                                              display_name=display))
    return dict(sink.counts)


def _specs(folder: Path, results: str) -> dict[str, str]:
    """The Specs tab of a results file: software versions and the machine, as key -> value."""
    specs = folder / (results.split("__")[0] + "__Specs.csv")
    if not specs.exists():
        return {}
    with specs.open(newline="") as fh:
        return {r[0].strip(): r[1].strip() for r in csv.reader(fh) if len(r) > 1 and r[0].strip()}


def _dtypes(precision: str) -> tuple[torch.dtype | None, str | None, bool]:
    """(tensor dtype, compute dtype, whether convolutions stay fp32) of a precision line."""
    p = precision.lower()
    conv_float = "convolution results are still in float" in p
    if "int8" in p:
        return None, None, conv_float
    if p.startswith("16 bit inputs"):
        return torch.float16, "fp32" if "32 bit multiplication" in p else "fp16", conv_float
    return torch.float32, "fp32", conv_float


def _header(cells: list[str], names: dict[str, str]) -> dict[str, int]:
    """Column index of each of our names, from a DeepBench header row."""
    out = {}
    for i, cell in enumerate(cells):
        key = re.sub(r"\s*\(.*", "", " ".join(cell.lower().split())).strip()
        if key in names and names[key] not in out:
            out[names[key]] = i
    return out


def _import_file(f: Path, rel: str, hw: str, machine: str, specs: dict, prov: Provenance,
                 sink: RowSink) -> None:
    precision, section, columns = "", None, {}
    tensor_dtype, compute, conv_float = torch.float32, "fp32", False
    with f.open(newline="") as fh:
        reader = csv.reader(fh)
        for cells in reader:
            line = reader.line_num
            first = cells[0].strip() if cells else ""
            if first == "Precision":
                precision = ", ".join(c for c in cells[1:] if c.strip())
                tensor_dtype, compute, conv_float = _dtypes(precision)
                continue
            started = next((s for head, s in _SECTIONS if first.startswith(head)), None)
            if started:
                section = started
                columns = _header(cells, _GEMM_COLUMNS) if section == "gemm" else {}
                continue
            if first or not any(c.strip() for c in cells):
                continue
            if section == "conv" and "W" not in columns:
                columns = _header(cells, _CONV_COLUMNS)
                continue
            if section in ("sparse", "rnn", "allreduce"):
                sink.counts[f"skipped_{section}"] += 1
                continue
            if section not in ("gemm", "conv"):
                continue
            dtype = torch.float32 if section == "conv" and conv_float else tensor_dtype
            comp = "fp32" if section == "conv" and conv_float else compute
            if dtype is None:
                sink.counts["skipped_int8"] += 1
                continue
            values = {k: cells[i].strip() if i < len(cells) else "" for k, i in columns.items()}
            values.setdefault("application", cells[1].strip() if len(cells) > 1 else "")
            runtime = _number(values.get("fwd"))
            if runtime is None:  # a blank cell: the kernel was not run on this machine
                sink.counts["skipped_no_time"] += 1
                continue
            build = _gemm if section == "gemm" else _conv
            sub, extra, error = build(values, dtype, comp)
            extra.update(precision=precision, tab=f.stem.split("__")[-1], machine=machine,
                         software=_software(specs), listed_tflops=_listed_tflops(values))
            if machine in _NOTES:
                extra["hardware_note"] = _NOTES[machine]
            sink.add("measurements", measurement_row(
                prov, hardware=hw, runtime_ms=runtime, scope="kernel",
                subdiagram_hash=sink.subdiagram(sub, SOURCE) if sub is not None else None,
                key=(rel, line), error=error, framework="deepbench",
                cuda_version=specs.get("CUDA Version") or None,
                driver_version=specs.get("Nvidia Driver") or None, extra_json=dumps(extra)))


def _software(specs: dict[str, str]) -> dict[str, str] | None:
    """The library and driver versions a Specs tab lists (not the BIOS or the kernel)."""
    return {k: v for k, v in specs.items() if v and ("version" in k.lower() or k == "Nvidia Driver")
            and not k.startswith(("Bios", "Linux"))} or None


def _listed_tflops(values: dict) -> float | None:
    """DeepBench's own throughput for the row (TFLOP/s; device tabs list GFLOP/s)."""
    tflops, gflops = _number(values.get("tflops")), _number(values.get("gflops"))
    return tflops if tflops is not None else (gflops / 1e3 if gflops is not None else None)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _ints(values: dict, names: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(int(float(values[n])) for n in names)


def _gemm(values: dict, dtype: torch.dtype, compute: str):
    """C[M, N] = op(A)[M, K] @ op(B)[K, N] as aten.mm; (subdiagram or None, extra, error)."""
    extra = {"op": "gemm", "transpose_a": values.get("ta") or None,
             "transpose_b": values.get("tb") or None,
             "application": values.get("application") or None}
    try:
        m, n, k = _ints(values, ("M", "N", "K"))
        a = torch.empty(m, k, dtype=dtype, device="meta")
        b = torch.empty(k, n, dtype=dtype, device="meta")
        return single_op(aten.mm.default, [a, b], dtype=compute), extra, None
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        return None, extra, f"cannot build the GEMM from {values}: {e}"


def _conv(values: dict, dtype: torch.dtype, compute: str):
    """A 2-D convolution, input (N, C, H, W), filters (K, C, R, S), no bias; (subdiagram or None,
    extra, error). R is the filter's height, S its width; P, Q the output's width and height."""
    extra = {"op": "conv", "algorithm": values.get("algorithm") or None,
             "application": values.get("application") or None,
             "backward_inputs_ms": _number(values.get("bwd_inputs")),
             "backward_params_ms": _number(values.get("bwd_params")),
             **{k: values.get(k) for k in ("W", "H", "C", "N", "K", "R", "S", "pad_h", "pad_w",
                                           "stride_h", "stride_w", "P", "Q")}}
    try:
        w, h, c, n, k, r, s, ph, pw, sh, sw = _ints(values, (
            "W", "H", "C", "N", "K", "R", "S", "pad_h", "pad_w", "stride_h", "stride_w"))
        x = torch.empty(n, c, h, w, dtype=dtype, device="meta")
        f = torch.empty(k, c, r, s, dtype=dtype, device="meta")
        sub = single_op(aten.convolution.default, [x, f],
                        args=(None, [sh, sw], [ph, pw], [1, 1], False, [0, 0], 1), dtype=compute)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:  # e.g. a kind capture lacks
        return None, extra, f"cannot build the convolution from {values}: {e}"
    # P and Q are the output's sides, in either order depending on the tab, and some tabs
    # print them unrounded (340.5 for 341): a check that R and S were read the right way round.
    out = sorted(sub.vertices[0].output_shapes[0][-2:])
    listed = sorted(v for v in map(_number, (values.get("P"), values.get("Q"))) if v is not None)
    if len(listed) == 2 and any(abs(a - b) > 1 for a, b in zip(out, listed)):
        return sub, extra, f"output {out} differs from DeepBench's P, Q = {listed}"
    return sub, extra, None

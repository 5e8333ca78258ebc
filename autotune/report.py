"""The autotuner's HTML report: one self-contained page (inline CSS and SVG, no scripts, nothing
fetched) that shows where a model's predicted time goes and what the tuned plan changed.

Sections: the headline numbers; the model as a row of layers coloured by predicted time; the
costliest layer drawn as a Feynman-style diagram (vertices are ops, lines are tensors, wavy lines
are weights, outlines are the plan's fusion groups, attention carries its mask); the search's
convergence; predicted against measured times where measurements exist; the costliest kernels
and the architecture what-ifs. Times are predicted milliseconds unless a column says measured.
"""
from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from autotune.search import SearchResult, changes
from costmodel.models.base import PlanCost
from costmodel.ir.diagram import Diagram, Vertex
from costmodel.ir.rules import compute_readers

PRE, POST = "embeddings", "head"
HALO = ' paint-order="stroke" stroke="#fff" stroke-width="3" stroke-linejoin="round"'  # text over lines
# Yellow to dark red (ColorBrewer YlOrRd): cheap is pale, costly is dark.
STOPS = ("#ffffb2", "#fed976", "#feb24c", "#fd8d3c", "#f03b20", "#bd0026", "#67001f")
KIND_LABEL = {"matmul": "matmul", "attention": "attention", "layer_norm": "norm", "softmax": "softmax",
              "gelu": "gelu", "activation": "act", "add": "add", "mul": "mul", "elementwise": "pointwise",
              "reduction": "reduce", "embedding": "embed", "gather": "gather", "copy": "copy",
              "fill": "fill", "conv": "conv"}

CSS = """
body{margin:0;background:#f6f5f2;color:#1d1d1f;font:15px/1.45 "DejaVu Sans",Helvetica,Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:18px;margin:0 0 6px}
.sub{color:#555;margin:0 0 16px}
.cards{display:flex;gap:14px;flex-wrap:wrap;margin-bottom:12px}
.card{background:#fff;border-radius:10px;padding:12px 18px;min-width:170px;
 box-shadow:0 1px 3px rgba(0,0,0,.12)}
.card .k{font-size:12px;color:#666;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:28px;font-weight:bold}
.card .v.good{color:#1a7f37}
.card .d{font-size:12px;color:#666}
.warn{background:#fff4d6;border-left:4px solid #e0a000;padding:8px 12px;margin:6px 0;border-radius:4px}
section{background:#fff;border-radius:10px;padding:16px 18px;margin:16px 0;
 box-shadow:0 1px 3px rgba(0,0,0,.12)}
.note{color:#555;font-size:13px;margin:0 0 8px}
.row{display:flex;gap:16px;flex-wrap:wrap}
.row>section{flex:1 1 520px;margin:0}
svg{display:block;max-width:100%;height:auto}
svg text{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif}
table{border-collapse:collapse;width:100%;font-size:13px}
th{text-align:left;color:#555;font-weight:normal;border-bottom:2px solid #ddd;padding:4px 8px}
td{border-bottom:1px solid #eee;padding:4px 8px;vertical-align:top}
td.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td.name{font-family:"DejaVu Sans Mono",monospace;font-size:12px;word-break:break-all}
td.wrap{overflow-wrap:anywhere}
.bar{display:inline-block;height:9px;background:#fd8d3c;border-radius:2px;margin-right:6px;
 vertical-align:middle}
.bar.save{background:#1a7f37}
footer{color:#777;font-size:12px;margin-top:20px}
"""


def render_report(*, diagram: Diagram, result: SearchResult, title: str,
                  whatifs: Sequence[Mapping] = (), measured: Mapping | None = None) -> str:
    """The report as one HTML string. `whatifs` rows carry name, description, baseline_ms,
    variant_ms and saving (a fraction); `measured` holds {"baseline"|"plan": {"predicted_ms",
    "measured_ms"}, "kernels": [{"name", "predicted_ms", "measured_ms"}, ...]}, all in
    milliseconds; a row whose times are not positive is left off its log-log plot."""
    groups = layer_groups(diagram)
    plan_ms = vertex_ms(result.best, result.baseline)
    base_ms = vertex_ms(result.baseline, result.baseline)
    layers = [g for g in groups if g.startswith("layer ")]
    ranked = sorted(groups, key=lambda g: -sum(plan_ms.get(v, 0.0) for v in groups[g]))
    detail = next((g for g in ranked if g in layers), ranked[0] if ranked else None)
    parts = [_header(diagram, result, title),
             _section("Where the time goes, layer by layer",
                      "Each box is a group of the model's vertices, coloured by its predicted time "
                      "under the tuned plan; the percentage is its change against eager.",
                      _overview_svg(groups, plan_ms, base_ms, detail))]
    if detail is not None:
        parts.append(_section(f"{detail.capitalize()} drawn as a diagram", _block_note(),
                              _block_svg(diagram, result.best, groups, detail, plan_ms)))
    row = [_section("Search convergence", f"Predicted time of each of the {result.trials} trials "
                    "and the best so far.", _convergence_svg(result))]
    if measured:
        row.append(_section("Predicted against measured", "Log-log; on the diagonal the "
                            "prediction is exact, the dashed lines are 2x off.",
                            _measured_svg(measured)))
    parts.append('<div class="row">' + "".join(row) + "</div>")
    parts.append(_section("Costliest kernels of the plan", "Identical kernels (same ops, shapes and "
                          "config) share a row.", _kernel_table(result, groups)))
    if whatifs:
        parts.append(_section("What-ifs", "Architecture variants priced by the cost model. They "
                              "change what the model computes, so they are suggestions, never "
                              "applied.", _whatif_table(whatifs)))
    parts.append(f"<footer>feyntune autotune report. Every time here is predicted by the "
                 f"{_e(result.best.cost_model)} cost model unless it says measured.</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>"
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body><main>\n"
            + "\n".join(parts) + "\n</main></body></html>\n")


def write_report(path: str | Path, *, diagram: Diagram, result: SearchResult, title: str,
                 whatifs: Sequence[Mapping] = (), measured: Mapping | None = None) -> Path:
    """Render the report (arguments as `render_report`) and write it to `path`; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(diagram=diagram, result=result, title=title, whatifs=whatifs,
                                 measured=measured), encoding="utf-8")
    return out


# --- what to draw -------------------------------------------------------------------------------

def layer_groups(diagram: Diagram) -> dict[str, list[str]]:
    """Vertex names grouped by repeated block: "embeddings", "layer 0", ..., "head". The block is
    the module prefix before a numeric path component ("bert.encoder.layer.3.attention" is layer
    3) that takes the most distinct numbers. Vertices before the first layer are "embeddings",
    after the last "head", and in between join the layer before them; a model with no repeated
    block is one group, "model"."""
    found = {}
    for v in diagram.vertices:
        m = re.match(r"^(.*?)(?:^|\.)(\d+)(?:\.|$)", v.module)
        if m:
            found[v.name] = (m.group(1), int(m.group(2)))
    indices: dict[str, set[int]] = {}
    for prefix, i in found.values():
        indices.setdefault(prefix, set()).add(i)
    if not indices or max(map(len, indices.values())) < 2:
        return {"model": [v.name for v in diagram.vertices]}
    block = max(indices, key=lambda p: (len(indices[p]), p))
    layer = {n: i for n, (p, i) in found.items() if p == block}
    groups: dict[str, list[str]] = {}
    current, seen_last = PRE, False
    last_vertex = [v.name for v in diagram.vertices if v.name in layer][-1]
    for v in diagram.vertices:
        if v.name in layer:
            current = f"layer {layer[v.name]}"
        elif seen_last:
            current = POST
        groups.setdefault(current, []).append(v.name)
        seen_last = seen_last or v.name == last_vertex
    return groups


def vertex_ms(cost: PlanCost, eager: PlanCost) -> dict[str, float]:
    """Each compute vertex's share of its kernel's predicted ms: a fused kernel's time is split
    in proportion to what its members cost alone under eager."""
    alone = {k.subdiagram.vertices[0].name: k.ms for k in eager.kernels
             if len(k.subdiagram.vertices) == 1}
    out = {}
    for k in cost.kernels:
        members = [v.name for v in k.subdiagram.vertices if not v.is_free]
        weights = [alone.get(n, 0.0) for n in members]
        total = sum(weights)
        for n, w in zip(members, weights):
            out[n] = k.ms * (w / total if total > 0 else 1 / len(members))
    return out


# --- drawing helpers ----------------------------------------------------------------------------

def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _ms(x: float) -> str:
    """Milliseconds to three significant figures, never in e-notation."""
    if not math.isfinite(x) or x <= 0:
        return f"{x:g}"
    return f"{x:.{max(0, 2 - math.floor(math.log10(x)))}f}"


def _color(t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(STOPS) - 1)
    i = min(int(t), len(STOPS) - 2)
    a, b = (tuple(int(s[j:j + 2], 16) for j in (1, 3, 5)) for s in STOPS[i:i + 2])
    return "#" + "".join(f"{round(x + (y - x) * (t - i)):02x}" for x, y in zip(a, b))


def _ink(t: float) -> str:
    """Text colour that reads on `_color(t)`."""
    return "#fff" if t > 0.62 else "#1d1d1f"


class _LogScale:
    """Milliseconds to [0, 1] on a log scale (floored at 1/1000 of the largest value)."""

    def __init__(self, values: Sequence[float]) -> None:
        pos = [v for v in values if v > 0 and math.isfinite(v)] or [1.0]
        self.hi = max(pos)
        self.lo = max(min(pos), self.hi / 1000)
        if self.hi / self.lo < 1.05:
            self.lo = self.hi / 1.05

    def __call__(self, v: float) -> float:
        return math.log(max(v, self.lo) / self.lo) / math.log(self.hi / self.lo)


def _svg(width: float, height: float, body: str, cls: str, label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="{cls}" viewBox="0 0 {width:.0f} '
            f'{height:.0f}" width="{width:.0f}" height="{height:.0f}" role="img" '
            f'aria-label="{_e(label)}">{body}</svg>')


def _text(x: float, y: float, s: object, size: int = 12, anchor: str = "middle", fill: str = "#1d1d1f",
          extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'fill="{fill}"{extra}>{_e(s)}</text>')


def _legend_bar(x: float, y: float, width: float, scale: _LogScale, gid: str) -> str:
    stops = "".join(f'<stop offset="{i / (len(STOPS) - 1):.3f}" stop-color="{c}"/>'
                    for i, c in enumerate(STOPS))
    out = [f'<defs><linearGradient id="{gid}">{stops}</linearGradient></defs>',
           (f'<rect x="{x}" y="{y}" width="{width}" height="10" rx="2" fill="url(#{gid})" '
            'stroke="#999" stroke-width="0.5"/>'),
           _text(x - 6, y + 9, "predicted ms", 11, "end", "#555")]
    for f in (0.0, 0.5, 1.0):
        ms = scale.lo * (scale.hi / scale.lo) ** f
        out.append(_text(x + f * width, y + 24, _ms(ms), 10, "middle", "#555"))
    return "".join(out)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    step = 10 ** math.floor(math.log10((hi - lo) / n)) if hi > lo else 1.0
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Round ticks between `lo` and `hi` (> 0) for a log axis: 1-2-5 steps, finer if too few."""
    for mantissas in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        ticks = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                 for m in mantissas if lo <= m * 10.0 ** k <= hi]
        if len(ticks) >= 4:
            return ticks[:: max(1, len(ticks) // 7)]
    return _nice_ticks(lo, hi)


def _section(title: str, note: str, body: str) -> str:
    note = f'<p class="note">{_e(note)}</p>' if note else ""
    return f"<section><h2>{_e(title)}</h2>{note}{body}</section>"


# --- header -------------------------------------------------------------------------------------

def _spread(cost: PlanCost) -> float:
    """The relative spread (std of ln ms) of a plan's kernel time from its kernels' ensemble
    spreads, taking their errors as independent (as `SearchResult.speedup_spread` does)."""
    total = cost.kernels_ms
    return math.sqrt(sum((k.ms * k.spread) ** 2 for k in cost.kernels)) / total if total > 0 else 0.0


def _header(diagram: Diagram, result: SearchResult, title: str) -> str:
    base, best = result.baseline, result.best
    meta = [diagram.name] + [f"{k} {diagram.info(k)}" for k in ("batch", "seq") if diagram.info(k)]
    meta += [diagram.info("dtype") or "", f"on {best.target}", f"{best.cost_model} cost model",
             f"{result.trials} trials"]

    def card(key: str, value: str, detail: str, cls: str = "") -> str:
        return (f'<div class="card"><div class="k">{_e(key)}</div><div class="v {cls}">{_e(value)}'
                f'</div><div class="d">{_e(detail)}</div></div>')

    def pm(c: PlanCost) -> str:
        spread = _spread(c)
        return f", \u00b1{spread * 100:.2g}% (1\u03c3)" if spread > 0 else ""

    gain = f"{(1 - 1 / result.speedup) * 100:.1f}% less time"
    if (sigma := result.speedup_spread) > 0:
        low, high = result.speedup * math.exp(-sigma), result.speedup * math.exp(sigma)
        gain += f"; 1\u03c3 {low:.2f}\u2013{high:.2f}\u00d7"
    cards = [card("eager baseline", f"{_ms(base.total_ms)} ms", f"{len(base.kernels)} kernels{pm(base)}"),
             card("tuned plan", f"{_ms(best.total_ms)} ms", f"{len(best.kernels)} kernels{pm(best)}"),
             card("predicted speedup", f"{result.speedup:.2f}\u00d7", gain,
                  "good" if result.speedup > 1 else "")]
    warnings = dict.fromkeys((*best.warnings, *base.warnings))
    warn = "".join(f'<div class="warn">{_e(w)}</div>' for w in warnings)
    sub = " \u00b7 ".join(m for m in meta if m)
    return (f'<header><h1>{_e(title)}</h1><p class="sub">{_e(sub)}</p>'
            f'<div class="cards">{"".join(cards)}</div>{warn}</header>')


# --- the model, layer by layer ------------------------------------------------------------------

def _overview_svg(groups: dict[str, list[str]], plan_ms: dict[str, float],
                  base_ms: dict[str, float], detail: str | None) -> str:
    names = list(groups)
    plan = [sum(plan_ms.get(v, 0.0) for v in groups[g]) for g in names]
    base = [sum(base_ms.get(v, 0.0) for v in groups[g]) for g in names]
    scale = _LogScale(plan)
    width, margin, gap = 1180, 20, 10
    per_row = len(names) if len(names) <= 16 else math.ceil(len(names) / math.ceil(len(names) / 16))
    bw = min(110.0, (width - 2 * margin) / per_row - gap)
    bh, row_h = 64, 100
    rows = math.ceil(len(names) / per_row)
    out = []
    centers = []
    for i, g in enumerate(names):
        r, c = divmod(i, per_row)
        x, y = margin + c * (bw + gap), 18 + r * row_h
        centers.append((x, y))
    # The residual stream: one line through every box, in order.
    pts = " ".join(f"{x + bw / 2:.1f},{y + bh / 2:.1f}" for x, y in centers)
    out.append(f'<polyline points="{pts}" fill="none" stroke="#888" stroke-width="2"/>')
    for (x, y), g, p, b in zip(centers, names, plan, base):
        t = scale(p)
        label = "L" + g.split()[1] if g.startswith("layer ") else g
        change = f"{(p / b - 1) * 100:+.0f}%" if b > 0 else ""
        tip = (f"{g}: {len(groups[g])} vertices, plan {_ms(p)} ms, eager {_ms(b)} ms"
               + (" (drawn in detail below)" if g == detail else ""))
        stroke = 'stroke="#1d1d1f" stroke-width="3"' if g == detail else 'stroke="#777" stroke-width="1"'
        out.append(f'<g class="layer"><title>{_e(tip)}</title>'
                   f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{bh}" rx="8" '
                   f'fill="{_color(t)}" {stroke}/>'
                   + _text(x + bw / 2, y + 18, label, min(12, int((bw - 6) / (0.68 * len(label)))),
                           fill=_ink(t), extra=' font-weight="bold"')
                   + _text(x + bw / 2, y + 36, _ms(p), 11 if bw > 60 else 9, fill=_ink(t))
                   + _text(x + bw / 2, y + 53, change, 10 if bw > 60 else 8, fill=_ink(t)) + "</g>")
        if g == detail:
            out.append(_text(x + bw / 2, y + bh + 14, "detailed below", 10, fill="#1d1d1f"))
    height = 18 + rows * row_h + 30
    out.append(_legend_bar(width - 320, height - 36, 240, scale, "overview-scale"))
    return _svg(width, height, "".join(out), "overview", "layers coloured by predicted time")


# --- one block as a Feynman-style diagram -------------------------------------------------------

def _block_note() -> str:
    return ("Vertices are ops (circle size by kind, colour by predicted time under the plan), "
            "straight lines are tensors (arrow along the data flow, thickness by size, view ops "
            "folded into them), wavy lines are weights, grey outlines are the plan's fusion groups "
            "(one kernel each), and attention shows its mask. Hover for details.")


def _source(diagram: Diagram, name: str) -> tuple[str, list[str]]:
    """The compute vertex or graph input that `name` comes from, and the views in between."""
    views = []
    while (src := diagram.propagator[name].producer) is not None and diagram.vertex[src].is_free:
        views.append(src)
        if not diagram.vertex[src].inputs:
            return src, views
        name = diagram.vertex[src].inputs[0]
    return src if src is not None else name, views


def _mask_icon(kind: str, x: float, y: float, cell: float = 3.0) -> str:
    """A 6x6 sketch of which (query, key) pairs the mask keeps."""
    n, known = 6, 4

    def keep(i: int, j: int) -> bool:
        if kind == "causal":
            return j <= i
        if kind == "padding":
            return j < known + 1
        if kind == "scgpt":
            return j < known or i == j
        if kind == "custom":
            return (i + j) % 3 != 0
        return True

    cells = "".join(f'<rect x="{x + j * cell:.1f}" y="{y + i * cell:.1f}" width="{cell}" height="{cell}"/>'
                    for i in range(n) for j in range(n) if keep(i, j))
    return (f'<g class="mask-icon" fill="#3b5bdb"><rect x="{x:.1f}" y="{y:.1f}" width="{n * cell}" '
            f'height="{n * cell}" fill="#fff" stroke="#3b5bdb" stroke-width="0.6"/>{cells}</g>')


def _wavy(x0: float, y0: float, x1: float, y1: float, waves: float = 3.5, amp: float = 3.5) -> str:
    length = math.hypot(x1 - x0, y1 - y0)
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    pts = []
    for i in range(41):
        s = i / 40
        off = amp * math.sin(2 * math.pi * waves * s)
        pts.append(f"{x0 + ux * s * length - uy * off:.1f},{y0 + uy * s * length + ux * off:.1f}")
    return "M" + " L".join(pts)


def _hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Convex hull (Andrew's monotone chain), counter-clockwise; fewer than 3 points as given."""
    pts = sorted(set(points))
    if len(pts) < 3:
        return pts

    def half(seq: list) -> list:
        out: list = []
        for p in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]

    return half(pts) + half(pts[::-1])


def _shape(shapes: Sequence[Sequence[int]]) -> str:
    return ", ".join("(" + "\u00d7".join(map(str, s)) + ")" for s in shapes)


def _block_svg(diagram: Diagram, cost: PlanCost, groups: dict[str, list[str]], block: str,
               plan_ms: dict[str, float]) -> str:
    members = [n for n in groups[block] if not diagram.vertex[n].is_free]
    inside = set(members)
    group_of = {n: g for g, vs in groups.items() for n in vs}
    free = len(groups[block]) - len(members)
    # Edges: (source, target, tensor, views); sources outside the block become external legs.
    edges, params, external = [], {}, {}
    for n in members:
        v = diagram.vertex[n]
        for name in dict.fromkeys(v.inputs):
            src, views = _source(diagram, name)
            p = diagram.propagator.get(src)
            if src in inside:
                edges.append((src, n, name, views))
            elif p is not None and p.role in ("parameter", "buffer", "constant"):
                params.setdefault(n, []).append(p)
            else:
                key = "in:" + src
                external.setdefault(key, (src, name))
                edges.append((key, n, name, views))
    outs = []
    model_out = {diagram.storage_of(o) for o in diagram.outputs}
    for n in members:
        v = diagram.vertex[n]
        leaving = [r for o in v.outputs for r in compute_readers(diagram, o) if r not in inside]
        if leaving or any(diagram.storage_of(o) in model_out for o in v.outputs):
            outs.append(n)
            edges.append((n, "out:" + n, v.outputs[0], []))
    # Longest-path columns, left to right. The external source read most (the block's input)
    # sits in column 0; the others are short legs just below and before their first reader.
    reads = {k: sum(1 for s, *_ in edges if s == k) for k in external}
    main = max(reads, key=lambda k: reads[k]) if reads else None
    col = {main: 0} if main else {}
    for n in members:
        col[n] = 1 + max((col.get(s, 0) for s, t, *_ in edges if t == n), default=0)
    last = max((col[n] for n in members), default=0) + 1
    for n in outs:
        col["out:" + n] = last
    # Rows: each column ordered by the mean row of its sources, then centred.
    by_col: dict[int, list[str]] = {}
    for k, c in col.items():
        by_col.setdefault(c, []).append(k)
    row: dict[str, float] = {}
    for c in sorted(by_col):
        keys = by_col[c]
        preds = {k: [row[s] for s, t, *_ in edges if t == k and s in row] for k in keys}
        keys.sort(key=lambda k: sum(preds[k]) / len(preds[k]) if preds[k] else 0.0)
        for j, k in enumerate(keys):
            row[k] = j - (len(keys) - 1) / 2
    bottom = max(row.values(), default=0.0) + 0.85
    for k in external:
        if k != main:  # a leg coming up from below into its first reader
            first = next(t for s, t, *_ in edges if s == k)
            col[k], row[k] = col[first] - 0.5, bottom
    dx = max(64.0, min(104.0, 1000 / max(last, 1)))
    dy, left = 96.0, 150.0
    y_mid = 110 + max((-r for r in row.values()), default=0) * dy
    width = left + last * dx + 60
    pos = {k: (left + col[k] * dx, y_mid + row[k] * dy) for k in col}
    scale = _LogScale([plan_ms.get(n, 0.0) for n in members])
    radius = {"attention": 15, "matmul": 12, "conv": 12}
    r_of = {k: (radius.get(diagram.vertex[k].kind, 8) if k in inside else 5) for k in pos}
    out = []
    # Fusion groups first, so they sit behind everything.
    for k in cost.kernels:
        fused = [v.name for v in k.subdiagram.vertices if v.name in inside]
        if len(fused) < 2:
            continue
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in _hull([pos[n] for n in fused]))
        tip = f"fusion group (one kernel): {' + '.join(fused)}, {_ms(k.ms)} ms"
        # A hull padded by a wide round-joined stroke: an outline first, the fill over it.
        out.append(f'<g class="fusion"><title>{_e(tip)}</title>'
                   f'<polygon points="{pts}" fill="#6c757d" fill-opacity="0.55" stroke="#6c757d" '
                   'stroke-opacity="0.55" stroke-width="46" stroke-linejoin="round"/>'
                   f'<polygon points="{pts}" fill="#eef1f4" stroke="#eef1f4" stroke-width="42" '
                   'stroke-linejoin="round"/></g>')
    big = max((diagram.propagator[t].bytes for _, _, t, _ in edges), default=1)
    for s, t, tensor, views in edges:
        (x0, y0), (x1, y1) = pos[s], pos[t]
        p = diagram.propagator[tensor]
        w = 1.2 + 2.3 * math.sqrt(p.bytes / big) if big else 1.5
        span = col[t] - col[s]
        if span > 1.5:  # an arc over the vertices in between
            cx, cy = (x0 + x1) / 2, y0 - min(30 + 14 * span, 150)
            d = f"M{x0:.1f},{y0:.1f} Q{cx:.1f},{cy:.1f} {x1:.1f},{y1:.1f}"
            mx, my = 0.25 * x0 + 0.5 * cx + 0.25 * x1, 0.25 * y0 + 0.5 * cy + 0.25 * y1
        else:
            d = f"M{x0:.1f},{y0:.1f} L{x1:.1f},{y1:.1f}"
            mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        angle = math.degrees(math.atan2(y1 - y0, x1 - x0))
        tip = f"tensor {tensor} {_shape([p.shape])} {p.dtype}, {p.bytes / 1e6:.3g} MB"
        if views:
            tip += f"; through views: {', '.join(reversed(views))}"
        out.append(f'<g class="tensor"><title>{_e(tip)}</title><path d="{d}" fill="none" '
                   f'stroke="#444" stroke-width="{w:.1f}"/>'
                   f'<path d="M-4,-3.5 L4,0 L-4,3.5 z" fill="#444" '
                   f'transform="translate({mx:.1f},{my:.1f}) rotate({angle:.0f})"/></g>')
    for n, ps in params.items():
        x, y = pos[n]
        r = r_of[n]
        tip = "weights: " + "; ".join(f"{p.name} {_shape([p.shape])}" for p in ps)
        tip += f" ({sum(p.bytes for p in ps) / 1e6:.3g} MB)"
        wave = _wavy(x - 30, y - 44, x - r * 0.6, y - r * 0.8)
        out.append(f'<g class="weights"><title>{_e(tip)}</title><path d="{wave}" fill="none" '
                   'stroke="#2b8a3e" stroke-width="1.6"/></g>')
    for key, (src, tensor) in external.items():
        x, y = pos[key]
        origin = group_of.get(src, "input")
        what = diagram.vertex[src].kind if src in diagram.vertex else "input"
        if key == main:
            label = (_text(x - 10, y - 2, f"from {origin}", 11, "end", "#555")
                     + _text(x - 10, y + 11, what, 10, "end", "#888"))
        else:
            label = _text(x + 9, y + 4, f"from {origin}: {what}", 10, "start", "#777")
        out.append(f'<g class="leg"><title>{_e(f"from {src} ({origin}: {what}), tensor {tensor}")}</title>'
                   f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="#fff" stroke="#444" '
                   f'stroke-width="1.5"/>{label}</g>')
    for n in outs:
        x, y = pos["out:" + n]
        out.append(f'<g class="leg"><title>{_e(f"{n} leaves {block}")}</title><circle cx="{x:.1f}" '
                   f'cy="{y:.1f}" r="5" fill="#fff" stroke="#444" stroke-width="1.5"/>'
                   + _text(x + 9, y + 4, "out", 11, "start", "#555") + "</g>")
    for n in members:
        v: Vertex = diagram.vertex[n]
        x, y = pos[n]
        ms = plan_ms.get(n, 0.0)
        t = scale(ms)
        label = KIND_LABEL.get(v.kind, v.kind)
        leaf = v.module.rsplit(".", 1)[-1]
        leaf = "" if leaf.isdigit() or leaf == label else leaf
        tip = (f"{n}: {v.op}\nin {_shape(v.input_shapes)}\nout {_shape(v.output_shapes)}\n"
               f"{v.dtype}, {v.flops / 1e6:.3g} MFLOP, {(v.bytes_read + v.bytes_written) / 1e6:.3g} MB\n"
               f"{_ms(ms)} ms (its share of its kernel)\nmodule {v.module}")
        glyph = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r_of[n]}" fill="{_color(t)}" stroke="#1d1d1f" '
                 'stroke-width="1.4"/>')
        extra = ""
        if v.kind == "attention":
            kind = v.mask_kind or "none"
            density = f", keeps {v.mask_density:.0%} of pairs" if v.mask_density is not None else ""
            tip += f"\nmask {kind}{density}"
            extra = (_mask_icon(kind, x + 18, y - 30)
                     + _text(x + 27, y - 34, kind, 11, fill="#3b5bdb",
                             extra=' class="mask" font-weight="bold"' + HALO))
        out.append(f'<g class="vertex"><title>{_e(tip)}</title>{glyph}'
                   + _text(x, y + r_of[n] + 14, label, 11, extra=HALO)
                   + _text(x, y + r_of[n] + 26, leaf, 9, fill="#777", extra=HALO)
                   + _text(x, y + r_of[n] + 38, _ms(ms), 9, fill="#777", extra=HALO) + extra + "</g>")
    height = y_mid + max(row.values(), default=0) * dy + 90
    legend_y = height - 26
    out.append(_legend_bar(width - 300, legend_y - 8, 200, scale, "block-scale"))
    key = [f'<path d="M20,{legend_y:.0f} L60,{legend_y:.0f}" stroke="#444" stroke-width="2"/>',
           _text(66, legend_y + 4, "tensor", 11, "start"),
           (f'<path d="{_wavy(120, legend_y, 160, legend_y)}" fill="none" stroke="#2b8a3e" '
            'stroke-width="1.6"/>'),
           _text(166, legend_y + 4, "weights", 11, "start"),
           (f'<rect x="230" y="{legend_y - 9:.0f}" width="44" height="18" rx="9" fill="#eef1f4" '
            'stroke="#6c757d" stroke-opacity="0.55" stroke-width="2"/>'),
           _text(280, legend_y + 4, "fusion group", 11, "start"),
           _text(380, legend_y + 4, f"{free} view ops folded into lines", 11, "start", "#777")]
    out.extend(key)
    return _svg(width, height, "".join(out), "block", f"{block} as a diagram")


# --- plots --------------------------------------------------------------------------------------

def _axes(x0: float, y0: float, w: float, h: float, xt: list, yt: list, fx, fy, xlabel: str,
          ylabel: str, fmt_x=_ms, fmt_y=_ms) -> str:
    out = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>']
    for v in xt:
        x = fx(v)
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + h}" stroke="#eee"/>'
                   + _text(x, y0 + h + 16, fmt_x(v), 11, fill="#555"))
    for v in yt:
        y = fy(v)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#eee"/>'
                   + _text(x0 - 6, y + 4, fmt_y(v), 11, "end", "#555"))
    out.append(_text(x0 + w / 2, y0 + h + 36, xlabel, 12, fill="#333"))
    out.append(_text(16, y0 + h / 2, ylabel, 12, fill="#333",
                     extra=f' transform="rotate(-90 16 {y0 + h / 2:.1f})"'))
    return "".join(out)


def _convergence_svg(result: SearchResult) -> str:
    trials = [(i + 1, float(v)) for i, v in enumerate(result.history)
              if v is not None and math.isfinite(v)]
    width, height, x0, y0, w, h = 560, 320, 64, 16, 476, 250
    if not trials:
        return _svg(width, 60, _text(width / 2, 34, "no legal trials", 13), "convergence",
                    "no legal trials")
    base = result.baseline.total_ms
    # Log scale: a few wild trials would otherwise squash the part that matters.
    lo = min(min(v for _, v in trials), result.best.total_ms, base) / 1.04
    hi = max(max(v for _, v in trials), base) * 1.04
    n = len(result.history)

    def fx(i: float) -> float:
        return x0 + (i - 0.5) / max(n, 1) * w

    def fy(v: float) -> float:
        return y0 + h - math.log(v / lo) / math.log(hi / lo) * h

    xt = [t for t in _nice_ticks(1, n) if t >= 1] if n > 1 else [1]
    out = [_axes(x0, y0, w, h, xt, _log_ticks(lo, hi), fx, fy, "trial", "predicted ms (log scale)",
                 fmt_x=lambda v: f"{v:.0f}", fmt_y=lambda v: f"{v:g}")]
    out.append(f'<line x1="{x0}" y1="{fy(base):.1f}" x2="{x0 + w}" y2="{fy(base):.1f}" stroke="#888" '
               f'stroke-dasharray="5 4"/>' + _text(x0 + w - 4, fy(base) - 5, f"eager {_ms(base)} ms",
                                                   11, "end", "#555"))
    r = 3.2 if len(trials) <= 100 else 2.4
    dots = "".join(f'<circle cx="{fx(i):.1f}" cy="{fy(v):.1f}" r="{r}"><title>trial {i}: {_ms(v)} ms'
                   "</title></circle>" for i, v in trials)
    out.append(f'<g class="trials" fill="#fd8d3c" fill-opacity="0.7">{dots}</g>')
    best, pts = math.inf, []
    for i, v in trials:
        if v < best:
            if pts:
                pts.append(f"{fx(i):.1f},{fy(best):.1f}")
            best = v
        pts.append(f"{fx(i):.1f},{fy(best):.1f}")
    pts.append(f"{fx(n + 0.5):.1f},{fy(best):.1f}")
    out.append(f'<polyline class="best" points="{" ".join(pts)}" fill="none" stroke="#bd0026" '
               'stroke-width="2.2"/>')
    out.append(_text(x0 + w - 4, fy(best) + 15, f"best {_ms(best)} ms", 11, "end", "#bd0026",
                     ' font-weight="bold"'))
    return _svg(width, height, "".join(out), "convergence", "predicted ms per trial")


def _measured_svg(measured: Mapping) -> str:
    pts = []  # (predicted, measured, label, is_total)
    for key in ("baseline", "plan"):
        row = measured.get(key)
        if row:
            pts.append((float(row["predicted_ms"]), float(row["measured_ms"]), key, True))
    for row in measured.get("kernels", ()):
        pts.append((float(row["predicted_ms"]), float(row["measured_ms"]), str(row["name"]), False))
    pts = [p for p in pts if p[0] > 0 and p[1] > 0 and math.isfinite(p[0]) and math.isfinite(p[1])]
    width, height, x0, y0, w, h = 560, 320, 64, 16, 476, 250
    if not pts:
        return _svg(width, 60, _text(width / 2, 34, "no measurements", 13), "measured", "none")
    lo = math.log10(min(min(p[0], p[1]) for p in pts)) - 0.15
    hi = math.log10(max(max(p[0], p[1]) for p in pts)) + 0.15

    def f(v: float, a: float, length: float, flip: bool) -> float:
        u = (math.log10(v) - lo) / (hi - lo) * length
        return a + length - u if flip else a + u

    def fx(v):
        return f(v, x0, w, False)

    def fy(v):
        return f(v, y0, h, True)

    ticks = _log_ticks(10 ** lo, 10 ** hi)
    out = [_axes(x0, y0, w, h, ticks, ticks, fx, fy, "predicted ms", "measured ms",
                 fmt_x=lambda v: f"{v:g}", fmt_y=lambda v: f"{v:g}")]
    a, b = 10 ** lo, 10 ** hi
    out.append(f'<line x1="{fx(a):.1f}" y1="{fy(a):.1f}" x2="{fx(b):.1f}" y2="{fy(b):.1f}" stroke="#444" '
               'stroke-width="1.3"/>')
    for k in (2, 0.5):
        out.append(f'<line x1="{fx(a):.1f}" y1="{fy(a * k):.1f}" x2="{fx(b):.1f}" y2="{fy(b * k):.1f}" '
                   'stroke="#999" stroke-dasharray="4 4"/>')
    out.append(f'<clipPath id="measured-clip"><rect x="{x0}" y="{y0}" width="{w}" height="{h}"/>'
               "</clipPath>")
    dots = []
    for p, m, label, total in sorted(pts, key=lambda q: q[3]):
        tip = f"{label}: predicted {_ms(p)} ms, measured {_ms(m)} ms ({m / p:.2f}x)"
        if total:
            dots.append(f'<g class="point total"><title>{_e(tip)}</title><circle cx="{fx(p):.1f}" '
                        f'cy="{fy(m):.1f}" r="6" fill="#bd0026" stroke="#fff" stroke-width="1.5"/>'
                        + (_text(fx(p) - 9, fy(m) - 6, label, 11, "end", "#bd0026") if label == "baseline"
                           else _text(fx(p) + 9, fy(m) + 13, label, 11, "start", "#bd0026")) + "</g>")
        else:
            dots.append(f'<g class="point"><title>{_e(tip)}</title><circle cx="{fx(p):.1f}" '
                        f'cy="{fy(m):.1f}" r="3.5" fill="#fd8d3c" fill-opacity="0.75"/></g>')
    out.append('<g clip-path="url(#measured-clip)">' + "".join(dots) + "</g>")
    return _svg(width, height, "".join(out), "measured", "predicted against measured ms")


# --- tables -------------------------------------------------------------------------------------

def _where(groups: list[str]) -> str:
    """"layers 0-11, head" from a list of group names."""
    layers = sorted({int(g.split()[1]) for g in groups if g.startswith("layer ")})
    runs, out = [], []
    for i in layers:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    if runs:
        out.append(("layer " if len(layers) == 1 else "layers ")
                   + ", ".join(f"{a}" if a == b else f"{a}\u2013{b}" for a, b in runs))
    rest = [g for g in dict.fromkeys(groups) if not g.startswith("layer ")]
    return ", ".join([g for g in rest if g == PRE] + out + [g for g in rest if g != PRE])


def _kernel_table(result: SearchResult, groups: dict[str, list[str]], n: int = 12) -> str:
    """The plan's costliest kernels, identical kernels (same content and config) on one row."""
    changed = changes(result.plan)
    alone = {k.subdiagram.vertices[0].name: k.ms for k in result.baseline.kernels}
    group_of = {v: g for g, vs in groups.items() for v in vs}
    same: dict[tuple, list] = {}
    for k in result.best.kernels:
        same.setdefault((k.subdiagram.hash, k.config), []).append(k)
    top = sorted(same.values(), key=lambda ks: -sum(k.ms for k in ks))[:n]
    total = result.best.total_ms
    biggest = max((sum(k.ms for k in ks) for ks in top), default=1.0) or 1.0
    rows = []
    for ks in top:
        k = ks[0]
        names = [v.name for v in k.subdiagram.vertices if not v.is_free]
        what = [c for v in names for c in changed.get(v, [])]
        ms = sum(x.ms for x in ks)
        eager = sum(alone.get(v.name, 0.0) for x in ks for v in x.subdiagram.vertices)
        kinds = "+".join(KIND_LABEL.get(v.kind, v.kind) for v in k.subdiagram.vertices if not v.is_free)
        where = _where([group_of.get(x.subdiagram.vertices[0].name, "") for x in ks])
        bar = f'<span class="bar" style="width:{70 * ms / biggest:.0f}px"></span>'
        rows.append(f'<tr><td class="name" title="{_e(k.subdiagram.module)}">{_e("+".join(names))}</td>'
                    f"<td>{_e(kinds)}</td><td>{_e(where)}</td><td class=\"n\">{len(ks)}</td>"
                    f'<td class="n">{_ms(k.ms)}</td><td class="n">{bar}{_ms(ms)}</td>'
                    f'<td class="n">{ms / total * 100:.1f}%</td><td class="n">{_ms(eager)}</td>'
                    f"<td class=\"wrap\">{_e('; '.join(what) or 'as eager')}</td></tr>")
    return ("<table><thead><tr><th>kernel (first of its kind)</th><th>ops</th><th>where</th>"
            "<th>count</th><th>ms each</th><th>ms, all</th><th>of plan</th><th>eager ms, all</th>"
            "<th>what changed</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _whatif_table(whatifs: Sequence[Mapping]) -> str:
    rows = []
    for w in whatifs:
        saving = float(w.get("saving", 0.0))
        bar = f'<span class="bar save" style="width:{max(0.0, min(saving, 1.0)) * 80:.0f}px"></span>'
        rows.append(f"<tr><td>{_e(w.get('name', ''))}</td><td>{_e(w.get('description', ''))}</td>"
                    f"<td class=\"n\">{_ms(float(w['baseline_ms']))}</td>"
                    f"<td class=\"n\">{_ms(float(w['variant_ms']))}</td>"
                    f"<td class=\"n\">{bar}{saving * 100:.1f}%</td></tr>")
    return ("<table><thead><tr><th>what-if</th><th>what it changes</th><th>now ms</th>"
            "<th>variant ms</th><th>predicted saving</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>")

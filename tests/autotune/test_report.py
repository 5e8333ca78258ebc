import dataclasses
import math
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest

from autotune.priors import load_prior
from autotune.report import layer_groups, render_report, vertex_ms, write_report
from autotune.search import search
from autotune.space import Space
from costmodel.models.roofline import Roofline
from costmodel.hardware import load_profile

SVG = "{http://www.w3.org/2000/svg}"


def tuned(d):
    """20 trials after the heuristic prior's suggestions, so the plan fuses (as autotune's does)."""
    space = Space(d, load_profile("a100"))
    return d, search(space, Roofline(), trials=20, progress=False,
                     suggestions=load_prior("heuristic").suggest(space, 4))


@pytest.fixture(scope="module")
def bert(capture):
    return tuned(capture("bert-base", 1, 32))


@pytest.fixture(scope="module")
def gpt2(capture):
    return tuned(capture("gpt2", 1, 32))


def parse(page: str) -> ET.Element:
    """The whole page as XML: the report is written to be well-formed."""
    return ET.fromstring(page.split("\n", 1)[1])


def svg(root: ET.Element, cls: str) -> ET.Element | None:
    return next((s for s in root.iter(SVG + "svg") if s.get("class") == cls), None)


def test_report_is_well_formed_and_self_contained(bert):
    d, r = bert
    page = render_report(diagram=d, result=r, title="bert-base on a100")
    assert page.startswith("<!DOCTYPE html>")
    root = parse(page)
    blocks = re.findall(r"<svg.*?</svg>", page, re.DOTALL)
    assert len(blocks) == 3  # overview, block, convergence
    for block in blocks:
        ET.fromstring(block)
    assert {s.get("class") for s in root.iter(SVG + "svg")} == {"overview", "block", "convergence"}
    assert set(re.findall(r"https?://[^\s\"'<>)]*", page)) == {"http://www.w3.org/2000/svg"}
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert set(re.findall(r"url\((.)", page)) <= {"#"}
    assert f"{r.speedup:.2f}\u00d7" in page


def test_overview_has_every_layer_and_the_detail_is_the_costliest(bert):
    d, r = bert
    root = parse(render_report(diagram=d, result=r, title="t"))
    boxes = [g for g in svg(root, "overview").iter(SVG + "g") if g.get("class") == "layer"]
    assert len(boxes) == 14  # embeddings, 12 layers, head
    ms = {}
    for k in r.best.kernels:
        m = re.match(r"bert\.encoder\.layer\.(\d+)\.", k.subdiagram.module)
        if m:
            ms[int(m.group(1))] = ms.get(int(m.group(1)), 0.0) + k.ms
    drawn = int(svg(root, "block").get("aria-label").split()[1])
    assert ms[drawn] == pytest.approx(max(ms.values()))


def test_one_outline_per_fusion_group_of_the_drawn_block(bert):
    d, r = bert
    block = svg(parse(render_report(diagram=d, result=r, title="t")), "block")
    layer = int(block.get("aria-label").split()[1])
    prefix = f"bert.encoder.layer.{layer}."
    fused = [k for k in r.best.kernels if sum(not v.is_free for v in k.subdiagram.vertices) > 1
             and all(v.module.startswith(prefix) for v in k.subdiagram.vertices)]
    outlines = [g for g in block.iter(SVG + "g") if g.get("class") == "fusion"]
    assert len(fused) > 0 and len(outlines) == len(fused)
    vertices = [g for g in block.iter(SVG + "g") if g.get("class") == "vertex"]
    assert len(vertices) == sum(not d.vertex[n].is_free for n in layer_groups(d)[f"layer {layer}"])


@pytest.mark.parametrize("model,mask", [("gpt2", "causal"), ("bert", "none")])
def test_attention_carries_its_mask_kind(model, mask, request):
    d, r = request.getfixturevalue(model)
    block = svg(parse(render_report(diagram=d, result=r, title="t")), "block")
    labels = [t.text for t in block.iter(SVG + "text") if t.get("class") == "mask"]
    assert labels == [mask]


def test_text_is_escaped(bert):
    d, r = bert
    page = render_report(diagram=d, result=r, title="<script>x</script> & co",
                         whatifs=[{"name": "<b>mqa</b>", "description": "a \"b\" & c",
                                   "baseline_ms": 2.0, "variant_ms": 1.5, "saving": 0.25}])
    parse(page)
    assert "<script>" not in page and "<b>mqa" not in page
    assert "&lt;script&gt;x&lt;/script&gt; &amp; co" in page and "&lt;b&gt;mqa&lt;/b&gt;" in page


def test_whatifs_and_kernel_tables(bert):
    d, r = bert
    page = render_report(diagram=d, result=r, title="t", whatifs=[
        {"name": "multi-query attention", "description": "one key/value head",
         "baseline_ms": 2.0, "variant_ms": 1.75, "saving": 0.125}])
    assert "multi-query attention" in page and "12.5%" in page
    rows = [tr for tr in parse(page).iter("tr") if tr.find("td") is not None]
    assert len(rows) >= 2
    assert any("fused" in "".join(tr.itertext()) for tr in rows)  # the plan's changes are shown
    assert "What-ifs" not in render_report(diagram=d, result=r, title="t")


def test_illegal_trials_are_skipped(bert):
    d, r = bert
    h = r.history
    odd = dataclasses.replace(r, history=(h[0], None, math.inf, h[1], math.nan))
    plot = svg(parse(render_report(diagram=d, result=odd, title="t")), "convergence")
    dots = [c for g in plot.iter(SVG + "g") if g.get("class") == "trials" for c in g]
    assert len(dots) == 2
    empty = render_report(diagram=d, result=dataclasses.replace(r, history=(None,)), title="t")
    assert "no legal trials" in empty


def test_measured_scatter(bert):
    d, r = bert
    kernels = [{"name": k.subdiagram.name, "predicted_ms": k.ms, "measured_ms": 1.3 * k.ms}
               for k in r.best.kernels[:10]]
    measured = {"baseline": {"predicted_ms": r.baseline.total_ms, "measured_ms": 3.0},
                "plan": {"predicted_ms": r.best.total_ms, "measured_ms": 2.5},
                "kernels": [*kernels, {"name": "failed", "predicted_ms": 0.1, "measured_ms": 0.0}]}
    plot = svg(parse(render_report(diagram=d, result=r, title="t", measured=measured)), "measured")
    points = [g for g in plot.iter(SVG + "g") if (g.get("class") or "").startswith("point")]
    assert len(points) == 12  # the failed (0 ms) row has no place on a log axis
    assert sum(g.get("class") == "point total" for g in points) == 2


def test_spread_and_warnings_in_the_header(bert):
    d, r = bert
    kernels = tuple(dataclasses.replace(k, spread=0.2) for k in r.best.kernels[:1])
    best = dataclasses.replace(r.best, warnings=("a100 is far from <the training GPUs>",),
                               kernels=kernels + r.best.kernels[1:])
    spread = 0.2 * kernels[0].ms / best.kernels_ms  # one uncertain kernel: its share of the total
    page = render_report(diagram=d, result=dataclasses.replace(r, best=best), title="t")
    assert f"\u00b1{spread * 100:.2g}% (1\u03c3)" in page and "far from &lt;the training GPUs&gt;" in page
    assert "1\u03c3 " in page  # the speedup's range
    assert "\u00b1" not in render_report(diagram=d, result=r, title="t")


def test_layer_groups(bert, gpt2):
    for (d, _), pattern in ((bert, r"bert\.encoder\.layer\.(\d+)\."), (gpt2, r"transformer\.h\.(\d+)")):
        groups = layer_groups(d)
        assert list(groups) == ["embeddings", *(f"layer {i}" for i in range(12)), "head"]
        assert sorted(n for vs in groups.values() for n in vs) == sorted(v.name for v in d.vertices)
        for name, vs in groups.items():
            for n in vs:
                m = re.match(pattern, d.vertex[n].module)
                if m:
                    assert name == f"layer {m.group(1)}"


def test_vertex_ms_adds_up_to_the_plan(bert):
    _, r = bert
    assert sum(vertex_ms(r.best, r.baseline).values()) == pytest.approx(r.best.kernels_ms)
    assert sum(vertex_ms(r.baseline, r.baseline).values()) == pytest.approx(r.baseline.kernels_ms)


def test_write_report(bert, tmp_path):
    d, r = bert
    path = write_report(tmp_path / "sub" / "report.html", diagram=d, result=r, title="t")
    assert path == tmp_path / "sub" / "report.html"
    assert path.read_text(encoding="utf-8") == render_report(diagram=d, result=r, title="t")


def chromium() -> str | None:
    found = shutil.which("chromium")
    return found or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def read_png(path: Path) -> np.ndarray:
    """8-bit RGB(A) non-interlaced PNG to an (H, W, C) uint8 array; no imaging library needed."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, []
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + n
    bpp = 3 if color == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(h, w * bpp + 1)
    out = np.zeros((h, w * bpp), np.uint8)
    prev = np.zeros(w * bpp, np.uint8)
    for y in range(h):
        f, line = raw[y, 0], raw[y, 1:]
        if f == 0:
            row = line.copy()
        elif f == 1:  # Sub: a running sum per channel
            row = np.cumsum(line.reshape(w, bpp), axis=0, dtype=np.uint64).astype(np.uint8).ravel()
        elif f == 2:  # Up
            row = line + prev
        else:  # Average and Paeth depend on the pixel to the left: byte by byte
            row, a_, b_ = bytearray(line.tobytes()), prev.tobytes(), prev.tobytes()
            for i in range(w * bpp):
                left = row[i - bpp] if i >= bpp else 0
                up = b_[i]
                if f == 3:
                    row[i] = (row[i] + ((left + up) >> 1)) & 255
                else:
                    ul = a_[i - bpp] if i >= bpp else 0
                    p = left + up - ul
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                    row[i] = (row[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else ul)) & 255
            row = np.frombuffer(bytes(row), np.uint8)
        out[y] = prev = row
    return out.reshape(h, w, bpp)[:, :, :3]


@pytest.mark.skipif(chromium() is None, reason="no chromium here: `bash .ci/install-chromium` "
                    "installs Debian's chromium package for this real-browser test")
def test_report_renders_in_a_real_browser(bert, tmp_path):
    d, r = bert
    page = write_report(tmp_path / "report.html", diagram=d, result=r, title="bert-base on a100")
    png = tmp_path / "shot.png"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
           "--window-size=1280,2000", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          check=False)
    assert png.exists(), done.stderr[-2000:]
    pixels = read_png(png).reshape(-1, 3).astype(np.uint32)
    assert len(pixels) == 1280 * 2000
    rgb = pixels[:, 0] << 16 | pixels[:, 1] << 8 | pixels[:, 2]
    colors, counts = np.unique(rgb, return_counts=True)
    assert (rgb != colors[counts.argmax()]).mean() > 0.05  # not blank: 5% differ from the background
    assert len(colors) > 50  # text, the colour scale, the plots
    # The costliest layers' dark red (the top of the colour scale) is on screen.
    r_, g_, b_ = pixels.T
    assert ((r_ > 80) & (r_ < 140) & (g_ < 20) & (b_ < 50)).sum() > 500

"""The HTTP service, started for real on loopback and called with a real HTTP client."""
import http.client
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from costmodel.serve import make_server


@pytest.fixture(scope="module")
def server():
    srv = make_server("127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address
    srv.shutdown()
    srv.server_close()


def call(address, method, path, body=None, raw=None, timeout=120):
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = json.loads(resp.read())
    conn.close()
    return resp.status, payload


def test_health_and_targets(server):
    assert call(server, "GET", "/health") == (200, {"status": "ok", "cost_model": "gnn"})
    status, doc = call(server, "GET", "/targets")
    assert status == 200 and {"a100-sxm4-80gb", "h100-sxm", "cpu"} <= {t["name"] for t in doc["targets"]}


def test_predict_model_and_posted_diagram(server, capture):
    status, doc = call(server, "POST", "/predict", {"model": "scgpt", "seq": 32, "target": "h100"})
    assert status == 200 and doc["total_ms"] > 0 and doc["target"] == "h100-sxm"
    d = capture("scgpt", 1, 32)
    status, posted = call(server, "POST", "/predict/diagram",
                          {"diagram": json.loads(d.to_json()), "target": "h100"})
    assert status == 200 and posted["diagram_hash"] == d.hash == doc["diagram_hash"]
    assert posted["total_ms"] == pytest.approx(doc["total_ms"])


@pytest.mark.parametrize("path,body,raw,status,needle", [
    ("/predict", None, b"{not json", 400, "not JSON"),
    ("/predict", [1, 2], None, 400, "JSON object"),
    ("/predict", {"target": "a100"}, None, 400, "missing field 'model'"),
    ("/predict", {"model": "scgpt", "target": "a1000"}, None, 400, "valid choices"),
    ("/predict", {"model": "nope", "target": "a100"}, None, 400, "unknown model"),
    ("/predict", {"model": "scgpt", "target": "a100", "batch": "8"}, None, 400, "must be a int"),
    ("/predict", {"model": "scgpt", "seq": 32, "target": "a100", "plan": [{"x": 1}]}, None, 400,
     "plan does not apply"),
    ("/predict/diagram", {"diagram": {"vertices": []}, "target": "a100"}, None, 400, "not a diagram"),
    ("/predict", {"model": "scgpt", "target": "a100", "attention": "flash"}, None, 400,
     "valid choices: eager, sdpa"),
    ("/nowhere", {}, None, 404, "no such path"),
])
def test_bad_requests_get_4xx_with_a_reason(server, path, body, raw, status, needle):
    got, doc = call(server, "POST", path, body=body, raw=raw)
    assert got == status and needle in doc["error"]
    assert call(server, "GET", "/health")[0] == 200  # still serving


def test_200_concurrent_requests_none_lost(server):
    body = {"model": "scgpt", "seq": 32, "target": "a100"}
    call(server, "POST", "/predict", body)  # warm the diagram cache
    with ThreadPoolExecutor(max_workers=40) as pool:
        results = list(pool.map(lambda i: call(server, "POST", "/predict",
                                               {**body, "target": ["a100", "t4", "h100", "l4"][i % 4]}),
                                range(200)))
    assert len(results) == 200 and all(status == 200 for status, _ in results)
    totals = {doc["target"]: doc["total_ms"] for _, doc in results}
    assert len(totals) == 4 and totals["t4"] > totals["h100-sxm"]


def test_http_and_cli_answer_with_the_same_json(server):
    """One JSON contract (`costmodel.api.prediction`): an H100 lies beyond the GPUs the shipped
    GNN saw, and HTTP says so in `warnings`, with the spreads and overhead the CLI prints."""
    import subprocess
    import sys

    status, http_doc = call(server, "POST", "/predict", {"model": "scgpt", "seq": 32, "target": "h100"})
    assert status == 200
    assert any("outside the hardware" in w for w in http_doc["warnings"])
    assert {"spread", "config", "predicted_ms"} <= set(http_doc["subdiagrams"][0])
    assert http_doc["overhead_ms"] == pytest.approx(http_doc["total_ms"] - http_doc["kernels_ms"])
    cli = subprocess.run([sys.executable, "-m", "costmodel.cli", "predict", "--model", "scgpt",
                          "--seq", "32", "--target", "h100", "--json"], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    cli_doc = json.loads(cli.stdout)
    assert set(cli_doc) == set(http_doc) and set(cli_doc["subdiagrams"][0]) == set(http_doc["subdiagrams"][0])
    for key in ("model", "target", "batch", "seq", "dtype", "attention", "cost_model",
                "diagram_hash", "warnings", "kernels"):
        assert cli_doc[key] == http_doc[key], key
    assert cli_doc["total_ms"] == pytest.approx(http_doc["total_ms"])


def test_attention_over_http(server):
    status, eager = call(server, "POST", "/predict",
                         {"model": "gpt2", "seq": 64, "target": "a100", "attention": "eager"})
    assert status == 200 and eager["attention"] == "eager"
    status, sdpa = call(server, "POST", "/predict", {"model": "gpt2", "seq": 64, "target": "a100"})
    assert status == 200 and sdpa["attention"] == "sdpa" and sdpa["diagram_hash"] != eager["diagram_hash"]

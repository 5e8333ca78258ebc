"""The HTTP service, started for real on loopback and called with a real HTTP client."""
import http.client
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from costmodel.serve import make_server


@pytest.fixture(scope="module")
def server():
    srv = make_server("127.0.0.1", 0, cost_model="gnn")  # the GNN reads descriptors an H100 exceeds
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
                          "--seq", "32", "--target", "h100", "--cost-model", "gnn", "--json"],
                         capture_output=True, text=True)
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


# ---------------------------------------------------------------------------------------------
# What a client may and may not make the service do


@pytest.mark.parametrize("body,status,needle", [
    ({"model": "gpt2", "target": "a100", "seqq": 512}, 400, "unknown field 'seqq'"),
    ({"model": "/etc/passwd", "target": "a100"}, 400, "prices the zoo's models"),
    ({"model": "../../etc/hosts.json", "target": "a100"}, 400, "prices the zoo's models"),
    ({"model": "gpt2", "target": "a100", "batch": 1000, "seq": 1024}, 413, "outside what one request"),
    ({"model": "gpt2", "target": "a100", "seq": 64,
      "plan": [{"tile": "addmm", "config": {"block_m": 0, "block_n": 64, "block_k": 32}}]}, 400,
     "positive integer"),
])
def test_requests_the_service_refuses(server, body, status, needle):
    got, doc = call(server, "POST", "/predict", body)
    assert got == status and needle in doc["error"], doc
    assert "passwd" not in doc["error"] or "does not exist" not in doc["error"]  # no file probing


def test_nan_in_a_posted_diagram_is_a_bad_request(server, capture):
    doc = json.loads(capture("scgpt", 1, 32).to_json())
    doc["vertices"][0]["flops"] = float("nan")
    got, answer = call(server, "POST", "/predict/diagram", raw=json.dumps({"diagram": doc, "target": "a100"}).encode())
    assert got == 400 and "NaN" in answer["error"]


def test_get_on_a_post_route_is_405(server):
    conn = http.client.HTTPConnection(*server, timeout=30)
    conn.request("GET", "/predict")
    resp = conn.getresponse()
    assert resp.status == 405 and resp.getheader("Allow") == "POST"
    resp.read()
    conn.close()


def test_a_body_that_never_arrives_frees_its_thread():
    import socket
    import time

    srv = make_server("127.0.0.1", 0, cost_model="roofline")
    srv.RequestHandlerClass.timeout = 1  # 30 s in service
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        sock = socket.create_connection(srv.server_address, timeout=10)
        sock.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"model\"")
        start = time.monotonic()
        reply = sock.recv(4096)
        assert b"408" in reply and time.monotonic() - start < 5
        sock.close()
        assert call(srv.server_address, "GET", "/health")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_configs_from_the_folder_it_was_given(tmp_path):
    (tmp_path / "tiny.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_layer": 1,
                                                    "n_head": 2, "vocab_size": 100, "n_positions": 64}))
    srv = make_server("127.0.0.1", 0, cost_model="roofline", configs=tmp_path)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        status, doc = call(srv.server_address, "POST", "/predict", {"model": "tiny.json", "seq": 32, "target": "a100"})
        assert status == 200 and doc["model"] == "tiny"
        status, doc = call(srv.server_address, "POST", "/predict", {"model": "../tiny.json", "target": "a100"})
        assert status == 400 and "no config" in doc["error"]
    finally:
        srv.shutdown()
        srv.server_close()

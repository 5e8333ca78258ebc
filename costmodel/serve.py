"""`costmodel serve`: cost predictions as JSON over HTTP.

    GET  /health                  {"status": "ok", "cost_model": ...}
    GET  /targets                 the hardware targets
    POST /predict                 {"model", "target", "batch"?, "seq"?, "dtype"?, "attention"?,
                                   "plan"?: [decisions]}
    POST /predict/diagram         {"diagram": <costmodel diagram --json>, "target", "plan"?}

Both predictions answer with `costmodel.api.prediction`'s JSON, the shape `costmodel predict
--json` prints (warnings and spreads included). A bad request gets a 4xx with {"error": "..."}
saying what was wrong; the server keeps serving. Captured diagrams are cached (a capture takes seconds, a prediction milliseconds).
Requests run on threads; capture and prediction are serialised by one lock (torch.export is not
thread-safe), so concurrent requests queue rather than fail.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from costmodel import api
from costmodel.errors import UserError
from costmodel.hardware import list_profiles, load_profile
from costmodel.ir.diagram import Diagram
from costmodel.ir.plan import Plan
from costmodel.models import CostModel, load_cost_model
from costmodel.models.registry import DEFAULT_COST_MODEL

MAX_BODY = 64 * 2**20  # bytes; a posted bert-large diagram is about 1 MB


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Service:
    """What the handler calls: prediction with a diagram cache, independent of HTTP."""

    def __init__(self, cost_model: CostModel, *, cache_size: int = 32,
                 configs: Path | None = None) -> None:
        self.cost_model = cost_model
        self.configs = configs.resolve() if configs is not None else None
        self.lock = threading.Lock()
        self._diagrams: OrderedDict[tuple, Diagram] = OrderedDict()
        self._cache_size = cache_size

    def diagram(self, model: str, batch: int, seq: int, dtype: str, attention: str = "sdpa") -> Diagram:
        from costmodel.ir.zoo import capture_model

        key = (model, batch, seq, dtype, attention)
        if key in self._diagrams:
            self._diagrams.move_to_end(key)
            return self._diagrams[key]
        d = capture_model(model, batch, seq, dtype, attention=attention)
        self._diagrams[key] = d
        if len(self._diagrams) > self._cache_size:
            self._diagrams.popitem(last=False)
        return d

    def model_path(self, model: str) -> str:
        """A zoo name as it is; a config file only from the folder the service was started with
        (`--configs DIR`), never a path outside it: the service reads no other file."""
        from costmodel.ir.zoo import ZOO_NAMES

        if model in ZOO_NAMES:
            return model
        if self.configs is None:
            raise BadRequest(400, f"unknown model {model!r}; this service prices the zoo's models "
                                  f"({', '.join(ZOO_NAMES)}); start it with --configs DIR to price "
                                  "Hugging Face config files from DIR")
        path = (self.configs / model).resolve()
        if path.parent != self.configs or path.suffix != ".json" or not path.is_file():
            raise BadRequest(400, f"no config {model!r} in this service's config folder; give the "
                                  "name of a .json file in it")
        return str(path)

    def predict(self, body: dict) -> dict:
        _known(body, PREDICT_FIELDS)
        model = self.model_path(_field(body, "model", str))
        target = _field(body, "target", str)
        batch = _field(body, "batch", int, 1)
        seq = _field(body, "seq", int, 128)
        dtype = _field(body, "dtype", str, "fp32")
        attention = _field(body, "attention", str, "sdpa")
        plan = self._plan(body)
        if batch < 1 or seq < 1 or batch * seq > MAX_TOKENS or batch * seq * seq > MAX_MASK:
            raise BadRequest(413, f"batch {batch} x seq {seq} is outside what one request may "
                                  f"price: at least 1 each, at most {MAX_TOKENS:,} tokens and "
                                  f"{MAX_MASK:,} attention-mask elements")
        with self.lock:
            hw = load_profile(target)
            hw.peak(dtype)
            diagram = self.diagram(model, batch, seq, dtype, attention)
            return api.prediction(api.price(self.cost_model, diagram, hw, plan), diagram,
                                  plan="posted" if plan.decisions else "eager")

    def predict_diagram(self, body: dict) -> dict:
        _known(body, DIAGRAM_FIELDS)
        doc = _field(body, "diagram", dict)
        target = _field(body, "target", str)
        plan = self._plan(body)
        try:
            diagram = Diagram.from_dict(doc)
        except ValueError as e:
            raise BadRequest(400, str(e)) from None
        with self.lock:
            return api.prediction(api.price(self.cost_model, diagram, load_profile(target), plan),
                                  diagram, plan="posted" if plan.decisions else "eager")

    def _plan(self, body: dict) -> Plan:
        try:
            return Plan.from_list(_field(body, "plan", list, []))
        except ValueError as e:
            raise BadRequest(400, f"plan does not apply: {e}") from None

    def targets(self) -> dict:
        out = []
        for name in list_profiles():
            hw = load_profile(name)
            out.append({"name": hw.name, "kind": hw.kind, "aliases": list(hw.aliases),
                        "dtypes": list(hw.dtypes), "display_name": hw.display_name})
        return {"targets": out}


PREDICT_FIELDS = ("model", "target", "batch", "seq", "dtype", "attention", "plan")
DIAGRAM_FIELDS = ("diagram", "target", "plan")
MAX_TOKENS = 2**17  # batch x seq one request may price: a capture of it takes seconds, not minutes
MAX_MASK = 2**26  # batch x seq x seq: the attention mask a capture evaluates


def _known(body: dict, fields: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise BadRequest(400, f"unknown field {unknown[0]!r}; valid fields: {', '.join(fields)}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number this service takes")


def _field(body: dict, key: str, kind: type, default: Any = ...) -> Any:
    if key not in body:
        if default is ...:
            raise BadRequest(400, f"missing field {key!r}")
        return default
    value = body[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise BadRequest(400, f"field {key!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def make_handler(service: Service) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30  # seconds a connection may stay silent: a body that never ends frees its thread

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet: one line per error only
            pass

        def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
            try:
                data = json.dumps(payload, allow_nan=False).encode()
            except ValueError:  # a NaN or infinity in an answer: say so rather than send bad JSON
                status, data = 500, json.dumps({"error": "internal error: the prediction is not a "
                                                         "finite number"}).encode()
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, route) -> None:
            try:
                self._send(200, route())
            except BadRequest as e:
                self._send(e.status, {"error": str(e)})
            except UserError as e:
                self._send(400, {"error": str(e)})
            except Exception as e:  # a bug must not take the server down; say what happened
                self._send(500, {"error": f"internal error: {type(e).__name__}: {e}"})

        def do_GET(self) -> None:
            routes = {"/health": lambda: {"status": "ok", "cost_model": service.cost_model.name},
                      "/targets": service.targets}
            if self.path in ("/predict", "/predict/diagram"):
                return self._send(405, {"error": f"{self.path} takes POST with a JSON body"},
                                  {"Allow": "POST"})
            if self.path not in routes:
                return self._send(404, {"error": f"no such path {self.path!r}; GET /health, "
                                                 "/targets; POST /predict, /predict/diagram"})
            self._handle(routes[self.path])

        def do_POST(self) -> None:
            routes = {"/predict": service.predict, "/predict/diagram": service.predict_diagram}
            length = self.headers.get("Content-Length")
            if self.path not in routes:
                self._drain(length)
                return self._send(404, {"error": f"no such path {self.path!r}; POST /predict, "
                                                 "/predict/diagram"})
            if length is None or not length.isdigit():
                return self._send(411, {"error": "a Content-Length header is required"})
            if int(length) > MAX_BODY:
                self.close_connection = True
                return self._send(413, {"error": f"body over {MAX_BODY} bytes"})
            try:
                raw = self.rfile.read(int(length))
            except TimeoutError:
                self.close_connection = True
                return self._send(408, {"error": f"the body did not arrive within {self.timeout} s"})
            try:
                body = json.loads(raw, parse_constant=_reject_constant)
            except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
                return self._send(400, {"error": f"body is not JSON: {e}"})
            if not isinstance(body, dict):
                return self._send(400, {"error": "body must be a JSON object"})
            self._handle(lambda: routes[self.path](body))

        def _drain(self, length: str | None) -> None:
            if length and length.isdigit() and int(length) <= MAX_BODY:
                self.rfile.read(int(length))

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the listen backlog: bursts of connections wait instead of being reset


def make_server(host: str = "127.0.0.1", port: int = 8080, *, cost_model: CostModel | str = DEFAULT_COST_MODEL,
                configs: str | Path | None = None, calibration: str | Path | None = None) -> Server:
    """A server bound to (host, port); port 0 picks a free one (`server.server_address`).
    `configs`: a folder of Hugging Face config.json files requests may name (default none: the
    zoo's models only); `calibration`: a calibration file for the cost model (`costmodel
    calibrate`)."""
    if configs is not None and not Path(configs).is_dir():
        raise UserError(f"--configs {str(configs)!r} is not a folder")
    return Server((host, port), make_handler(Service(load_cost_model(cost_model, calibration=calibration),
                                                     configs=Path(configs) if configs else None)))

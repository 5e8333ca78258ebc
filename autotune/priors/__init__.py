"""Priors: where a search starts. A prior suggests full or partial assignments (param name ->
value) of a `Space`; the search enqueues them as its first trials.

    load_prior("heuristic")      # documented rules (the default): `heuristic`
    load_prior("none")           # no suggestions
    load_prior("llm:PROVIDER")   # a language model's suggestions: `llm`
"""
from __future__ import annotations

from autotune.priors.base import NoPrior, Prior
from autotune.priors.heuristic import HeuristicPrior
from costmodel.errors import UserError, unknown_choice

PRIORS = ("heuristic", "none", "llm:smollm2", "llm:gguf=PATH", "llm:openai=URL[,model=NAME]")


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
        from autotune.priors.llm import LlamaCppProvider, LLMPrior, OpenAIProvider, smollm2_gguf

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


__all__ = ["PRIORS", "HeuristicPrior", "NoPrior", "Prior", "load_prior"]

"""The prior contract: where a search starts. A prior suggests full or partial assignments
(param name -> value) of a `Space`; the search enqueues them as its first trials."""
from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Iterable, Mapping

from autotune.space import Choice, Space


class Prior(abc.ABC):
    """Suggests assignments of a space's params to values, to start a search from.

    Invariants, for every implementation (`tests/autotune/test_priors.py::PriorContract`):
    - `suggest(space, n)` returns at most `n` assignments, no two equal, each a fresh dict of
      param name -> value (one of the param's `choices`) that `space.plan_from` accepts (a param
      left out takes its eager choice); candidates that fail are dropped and counted, never
      returned, never raised.
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

    def suggest(self, space: Space, n: int) -> list[dict[str, Choice]]:
        """Up to `n` legal, distinct assignments for `space`, best first."""
        self._counts["asked"] += n
        out: list[dict[str, Choice]] = []
        if n <= 0:
            return out
        seen: set[tuple] = set()
        for candidate in self._candidates(space, n):
            self._counts["returned"] += 1
            reason = problem(space, candidate)
            if reason:
                self._counts["invalid"] += 1
                self._reasons[reason] += 1
                continue
            key = tuple(sorted((k, space.param[k].label(v)) for k, v in candidate.items()))
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


def problem(space: Space, candidate: object) -> str:
    """Why `candidate` is not a legal assignment of `space` ("" when it is)."""
    if not isinstance(candidate, Mapping) or not candidate:
        return "empty" if isinstance(candidate, Mapping) else "not an object"
    for name, value in candidate.items():
        if name not in space.param:
            return "unknown param"
        p = space.param[name]
        if value not in p.choices or isinstance(value, bool) != isinstance(p.choices[-1], bool):
            return "illegal choice"
    return "" if legal(space, candidate) else "illegal combination"


def legal(space: Space, assignment: Mapping[str, Choice]) -> bool:
    try:
        space.plan_from(assignment)
    except ValueError:
        return False
    return True


class NoPrior(Prior):
    """No suggestions: the search starts from eager alone."""

    name = "none"

    def _candidates(self, space: Space, n: int) -> Iterable[object]:
        return ()

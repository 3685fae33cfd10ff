"""logwarden's accounting equations over a scrape: every line and every trigger ends somewhere.

They hold whenever the pipeline is idle (nothing in the lines queue, no refresh queued or in
flight) and after a clean exit; the README's "Accounting" section states them for operators.
Used by the tests and the soak.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry

Samples = Mapping[tuple[str, tuple[tuple[str, str], ...]], float]


def samples_of(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                      float]:
    """An in-process registry in the shape :meth:`lab.agent.Agent.samples` returns."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples}


def _sum(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= set(lbl))


def _peers(samples: Samples) -> Iterable[str]:
    return sorted({dict(lbl)["peer"] for n, lbl in samples
                   if n == "logwarden_refreshes_total"})


def equations(samples: Samples) -> list[tuple[str, float, float]]:
    """(equation, left side, right side) for each equation."""
    lines = _sum(samples, "logwarden_lines_total")
    decided = (_sum(samples, "logwarden_lines_malformed_total")
               + _sum(samples, "logwarden_records_ignored_total")
               + _sum(samples, "logwarden_triggers_total"))
    triggers = _sum(samples, "logwarden_triggers_total")
    fanouts = _sum(samples, "logwarden_refresh_fanouts_total")
    ended = (_sum(samples, "logwarden_triggers_deduplicated_total") + fanouts
             + _sum(samples, "logwarden_storm_dropped_total"))
    result = [("lines = malformed + ignored + triggers", lines, decided),
              ("triggers = deduplicated + fan-outs + storm-dropped", triggers, ended)]
    for peer in _peers(samples):
        result.append((f"fan-outs = refreshes of {peer}, all outcomes", fanouts,
                       _sum(samples, "logwarden_refreshes_total", peer=peer)))
    return result


def violations(samples: Samples) -> list[str]:
    return [f"{name}: {left:g} != {right:g}" for name, left, right in equations(samples)
            if left != right]

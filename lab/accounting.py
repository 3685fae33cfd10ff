"""Metric samples as the tests, the soak and the benchmarks read them, and logwarden's
accounting equations over them: every line and every trigger ends somewhere.

A sample is keyed by (name, sorted labels), whether it comes from an in-process registry or a
scrape of ``/metrics``, so one :func:`total` serves both. The equations hold whenever the
pipeline is idle (nothing in the lines queue, no refresh queued or in flight) and after a clean
exit; the README's "Accounting" section states them for operators.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]
"""A sample's name and its labels, sorted."""
Samples = Mapping[Key, float]


def samples_of(registry: CollectorRegistry) -> dict[Key, float]:
    """An in-process registry in the shape :meth:`lab.agent.Agent.samples` returns."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples}


def parse_samples(text: str) -> dict[Key, float]:
    """A ``/metrics`` page (Prometheus text format) in the same shape."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: Samples, *names: str, **labels: str) -> float:
    """Sum over every series of the metrics ``names`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n in names and want <= set(lbl))


def by_label(samples: Samples, name: str, label: str, **labels: str) -> dict[str, float]:
    """The sum of ``name`` for each value of ``label``, over the series that include ``labels``
    (and have ``label``)."""
    want, out = set(labels.items()), defaultdict[str, float](float)
    for (n, lbl), v in samples.items():
        found = dict(lbl)
        if n == name and want <= set(lbl) and label in found:
            out[found[label]] += v
    return dict(out)


def equations(samples: Samples) -> list[tuple[str, float, float]]:
    """(equation, left side, right side) for each equation."""
    lines = total(samples, "logwarden_lines_total")
    decided = (total(samples, "logwarden_lines_malformed_total")
               + total(samples, "logwarden_records_ignored_total")
               + total(samples, "logwarden_triggers_total"))
    triggers = total(samples, "logwarden_triggers_total")
    fanouts = total(samples, "logwarden_refresh_fanouts_total")
    ended = (total(samples, "logwarden_triggers_deduplicated_total") + fanouts
             + total(samples, "logwarden_storm_dropped_total"))
    result = [("lines = malformed + ignored + triggers", lines, decided),
              ("triggers = deduplicated + fan-outs + storm-dropped", triggers, ended)]
    for peer in sorted(by_label(samples, "logwarden_refreshes_total", "peer")):
        result.append((f"fan-outs = refreshes of {peer}, all outcomes", fanouts,
                       total(samples, "logwarden_refreshes_total", peer=peer)))
    return result


def violations(samples: Samples) -> list[str]:
    return [f"{name}: {left:g} != {right:g}" for name, left, right in equations(samples)
            if left != right]

"""The matrix as a table, markdown or JSON (pure).

With ``--compare ERA`` each row names what that era loses silently (``LOSS upstream``) and
what it fails on loudly (``FAILS upstream``) among the devices podplug delivers
(:mod:`.compare`); the last line counts both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from podplug.matrix.check import Outcome, Result, summary
from podplug.matrix.compare import failures
from podplug.matrix.kata_models import era_by_name
from podplug.model.enums import Bucket

_ABBREV = {Bucket.COLD_VFIO: "c", Bucket.HOT_VFIO: "h", Bucket.HOT_BLOCK: "b",
           Bucket.NODE: "n", Bucket.REJECTED: "r"}
HEAD = ("#", "hypervisor", "vfio_mode", "cold", "hot", "driver", "aio", "mix", "container",
        "outcome", "buckets c/h/b/n/r", "detail")
_DETAIL = HEAD.index("detail")

Paths = Mapping[int, tuple[str, ...]]


def loud_failures(results: Sequence[Result], era: str) -> dict[int, tuple[str, ...]]:
    """Per combination, the delivered devices ``era`` (a ``--compare`` name) fails loudly on."""
    kata = era_by_name(era)
    return {i: found for i, r in enumerate(results) if (found := failures(r, kata))}


def _counts(result: Result) -> str:
    return "/".join(str(result.counts[b]) for b in _ABBREV)


def rows(results: Sequence[Result], losses: Paths | None, boots: Mapping[int, str] | None,
         loud: Paths | None = None) -> list[list[str]]:
    out = []
    for index, r in enumerate(results):
        c = r.combination
        marks = []
        if losses is not None and losses.get(index):
            marks.append(f"LOSS upstream: {', '.join(losses[index])}")
        if loud is not None and loud.get(index):
            marks.append(f"FAILS upstream: {', '.join(loud[index])}")
        detail = "; ".join([*marks, r.reason] if r.reason else marks)
        row = [str(index), c.hypervisor.value, c.vfio_mode.value, c.cold.value, c.hot.value,
               c.driver.value, c.aio.value, c.mix.value, c.container.value, r.outcome.value,
               _counts(r) if r.outcome is not Outcome.REJECTED else "-", detail]
        if boots is not None:
            row.append(boots.get(index, ""))
        out.append(row)
    return out


def compare_line(era: str, losses: Paths, loud: Paths) -> str:
    """The ``--compare`` summary: silent losses, then loud failures, of delivered devices."""
    hit = {i: p for i, p in losses.items() if p}
    failed = {i: p for i, p in loud.items() if p}
    return (f"{era}: loses devices podplug delivers in {len(hit)} combinations "
            f"({sum(len(p) for p in hit.values())} devices); fails loudly on devices podplug "
            f"delivers in {len(failed)} combinations ({sum(len(p) for p in failed.values())} "
            "devices)")


def _loud(results: Sequence[Result], losses: Paths | None, era: str) -> Paths | None:
    return None if losses is None else loud_failures(results, era)


def render_table(results: Sequence[Result], losses: Paths | None, era: str = "",
                 boots: Mapping[int, str] | None = None) -> str:
    head = list(HEAD) + (["boot"] if boots is not None else [])
    loud = _loud(results, losses, era)
    body = rows(results, losses, boots, loud)
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    widths[_DETAIL] = min(widths[_DETAIL], 60)
    lines = ["  ".join(c[:w].ljust(w) if i == _DETAIL else c.ljust(w)
                       for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()
             for line in [head, *body]]
    lines.append(summary(list(results)))
    if losses is not None and loud is not None:
        lines.append(compare_line(era, losses, loud))
    return "\n".join(lines) + "\n"


def render_markdown(results: Sequence[Result], losses: Paths | None, era: str = "",
                    boots: Mapping[int, str] | None = None) -> str:
    head = list(HEAD) + (["boot"] if boots is not None else [])
    loud = _loud(results, losses, era)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows(results, losses, boots, loud):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    lines += ["", summary(list(results))]
    if losses is not None and loud is not None:
        lines.append(compare_line(era, losses, loud))
    return "\n".join(lines) + "\n"


def render_json(results: Sequence[Result], losses: Paths | None, era: str = "",
                boots: Mapping[int, str] | None = None) -> dict[str, object]:
    loud = _loud(results, losses, era)
    items = []
    for index, r in enumerate(results):
        c = r.combination
        item: dict[str, object] = {
            "index": index, "hypervisor": c.hypervisor.value, "vfio_mode": c.vfio_mode.value,
            "cold_plug_vfio": c.cold.value, "hot_plug_vfio": c.hot.value,
            "block_device_driver": c.driver.value, "block_io": c.aio.value,
            "mix": c.mix.value, "container_type": c.container.value,
            "outcome": r.outcome.value,
            "counts": {b.value: n for b, n in r.counts.items()}, "reason": r.reason,
        }
        if losses is not None and loud is not None:
            item["upstream_losses"] = list(losses.get(index, ()))
            item["upstream_failures"] = list(loud.get(index, ()))
        if boots is not None and index in boots:
            item["boot"] = boots[index]
        items.append(item)
    doc: dict[str, object] = {"summary": summary(list(results)), "combinations": items}
    if losses is not None and loud is not None:
        doc["compare"] = {"era": era, "summary": compare_line(era, losses, loud)}
    return doc

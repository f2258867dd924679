"""The matrix as a table, markdown or JSON (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from podplug.matrix.check import Outcome, Result, summary
from podplug.model.enums import Bucket

_ABBREV = {Bucket.COLD_VFIO: "c", Bucket.HOT_VFIO: "h", Bucket.HOT_BLOCK: "b",
           Bucket.NODE: "n", Bucket.REJECTED: "r"}
HEAD = ("#", "hypervisor", "vfio_mode", "cold", "hot", "driver", "mix", "container",
        "outcome", "buckets c/h/b/n/r", "detail")


def _counts(result: Result) -> str:
    return "/".join(str(result.counts[b]) for b in _ABBREV)


def rows(results: Sequence[Result], losses: Mapping[int, tuple[str, ...]] | None,
         boots: Mapping[int, str] | None) -> list[list[str]]:
    out = []
    for index, r in enumerate(results):
        c = r.combination
        detail = r.reason
        if losses is not None and losses.get(index):
            detail = f"LOSS upstream: {', '.join(losses[index])}" + (
                f"; {detail}" if detail else "")
        row = [str(index), c.hypervisor.value, c.vfio_mode.value, c.cold.value, c.hot.value,
               c.driver.value, c.mix.value, c.container.value, r.outcome.value,
               _counts(r) if r.outcome is not Outcome.REJECTED else "-", detail]
        if boots is not None:
            row.append(boots.get(index, ""))
        out.append(row)
    return out


def _compare_line(era: str, losses: Mapping[int, tuple[str, ...]]) -> str:
    hit = {i: p for i, p in losses.items() if p}
    return (f"{era}: loses devices podplug delivers in {len(hit)} combinations "
            f"({sum(len(p) for p in hit.values())} devices)")


def render_table(results: Sequence[Result], losses: Mapping[int, tuple[str, ...]] | None,
                 era: str = "", boots: Mapping[int, str] | None = None) -> str:
    head = list(HEAD) + (["boot"] if boots is not None else [])
    body = rows(results, losses, boots)
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    widths[10] = min(widths[10], 60)
    lines = ["  ".join(c[:w].ljust(w) if i == 10 else c.ljust(w)
                       for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()
             for line in [head, *body]]
    lines.append(summary(list(results)))
    if losses is not None:
        lines.append(_compare_line(era, losses))
    return "\n".join(lines) + "\n"


def render_markdown(results: Sequence[Result], losses: Mapping[int, tuple[str, ...]] | None,
                    era: str = "", boots: Mapping[int, str] | None = None) -> str:
    head = list(HEAD) + (["boot"] if boots is not None else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows(results, losses, boots):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    lines += ["", summary(list(results))]
    if losses is not None:
        lines.append(_compare_line(era, losses))
    return "\n".join(lines) + "\n"


def render_json(results: Sequence[Result], losses: Mapping[int, tuple[str, ...]] | None,
                era: str = "", boots: Mapping[int, str] | None = None) -> dict[str, object]:
    items = []
    for index, r in enumerate(results):
        c = r.combination
        item: dict[str, object] = {
            "index": index, "hypervisor": c.hypervisor.value, "vfio_mode": c.vfio_mode.value,
            "cold_plug_vfio": c.cold.value, "hot_plug_vfio": c.hot.value,
            "block_device_driver": c.driver.value, "mix": c.mix.value,
            "container_type": c.container.value, "outcome": r.outcome.value,
            "counts": {b.value: n for b, n in r.counts.items()}, "reason": r.reason,
        }
        if losses is not None:
            item["upstream_losses"] = list(losses.get(index, ()))
        if boots is not None and index in boots:
            item["boot"] = boots[index]
        items.append(item)
    doc: dict[str, object] = {"summary": summary(list(results)), "combinations": items}
    if losses is not None:
        doc["compare"] = {"era": era, "summary": _compare_line(era, losses)}
    return doc

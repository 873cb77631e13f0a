"""The per-class AP table of a VOC result, as eval.py, `python -m ssd.voc.eval` and the demo print it."""

from __future__ import annotations

from typing import Any, Mapping

from ssd.evaluator import STATUS_NO_GROUND_TRUTH, STATUS_OK, STATUS_TEXT
from ssd.voc.metric import METRICS


def format_table(result: Mapping[str, Any]) -> str:
    """Per-class AP and mAP in percent, one decimal, with each class's status when not "ok".

    Takes a result or its JSON summary; without "status", an AP of None reads "no ground truth".
    """
    aps = result["classes"]
    statuses = result.get("status") or {}
    difficult = result.get("num_difficult") or {}
    width = max([len(name) for name in aps] + [len("mAP")]) + 2
    title = METRICS.get(result.get("metric"), str(result.get("metric")))
    header = f"{title} AP (%)"
    if result.get("num_images") is not None:
        header += f", {result['num_images']} images"
    lines = [header]

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{100.0 * value:.1f}"

    for name, ap in aps.items():
        status = statuses.get(name, STATUS_NO_GROUND_TRUTH if ap is None else STATUS_OK)
        note = STATUS_TEXT.get(status, "")
        if status == STATUS_NO_GROUND_TRUTH and difficult.get(name):
            note += f" (only {difficult[name]} difficult)"
        lines.append(f"{name:<{width}}{fmt(ap):>6}  {note}".rstrip())
    lines.append("-" * (width + 6))
    lines.append(f"{'mAP':<{width}}{fmt(result['mAP']):>6}")
    undefined = [name for name, ap in aps.items() if ap is None]
    if undefined:
        lines.append(f"n/a: no non-difficult ground truth, hence no AP ({', '.join(undefined)}); "
                     f"left out of the mAP")
    unknown = result.get("unknown_classes") or {}
    if unknown:
        listed = ", ".join(f"{name} ({count})" for name, count in unknown.items())
        lines.append(f"not scored: objects of classes outside the class list: {listed}")
    return "\n".join(lines)

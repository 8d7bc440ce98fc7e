"""Numbers for docs/reliability.md: each fault or abuse test records what it sent and saw.

With RELIABILITY_OUT set (tests/reliability/report.py sets it), every `record()` call appends
one JSON line to $RELIABILITY_OUT/results.jsonl; otherwise it does nothing. Tests assert
their own targets; this only carries the figures to the report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def record(
    case: str,
    *,
    how: str,
    requests: int,
    errors: int,
    lost: int = 0,
    notes: str = "",
) -> None:
    out = os.environ.get("RELIABILITY_OUT")
    if not out:
        return
    line = {
        "case": case,
        "how": how,
        "requests": requests,
        "errors": errors,
        "lost": lost,
        "notes": notes,
    }
    path = Path(out) / "results.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")

"""Tables of measurements to CSV and JSON, written atomically."""

from __future__ import annotations

import csv
import io as _io
import json
import os
import secrets
from pathlib import Path

import numpy as np

from ..core.errors import ValidationError

__all__ = ["write_table"]


def _plain(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in np.asarray(value, dtype=object).tolist()]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def write_table(rows: list[dict], stem, *, metadata: dict | None = None) -> tuple[Path, Path]:
    """Write ``rows`` as ``<stem>.csv`` (scalar columns) and ``<stem>.json`` (everything).

    The JSON holds ``{"metadata": ..., "rows": [...]}``; list-valued entries
    (histograms) go only to the JSON. Both files are written to temporary
    names first and moved into place together, so a failure leaves neither
    half-written nor an older pair half-replaced.
    """
    if not rows:
        raise ValidationError("no rows to write")
    stem = Path(stem)
    plain = [_plain(r) for r in rows]
    columns = []
    for r in plain:
        for k, v in r.items():
            if k not in columns and not isinstance(v, (list, dict)):
                columns.append(k)
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in plain:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    text_json = json.dumps({"metadata": _plain(metadata or {}), "rows": plain}, indent=2,
                           allow_nan=False) + "\n"
    stem.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    targets = {stem.with_suffix(".csv"): buf.getvalue(), stem.with_suffix(".json"): text_json}
    temps = {}
    try:
        for final, text in targets.items():
            tmp = final.with_name(f".tmp-{token}-{final.name}")
            tmp.write_text(text)
            temps[final] = tmp
        for final, tmp in temps.items():
            os.replace(tmp, final)
    finally:
        for tmp in temps.values():
            if tmp.exists():
                tmp.unlink()
    return stem.with_suffix(".csv"), stem.with_suffix(".json")

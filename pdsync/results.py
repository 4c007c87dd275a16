"""What a sync did: per entity and per run, and the progress events it sends while it runs.

These are the library's public results (``pdsync.sync()`` returns a ``SyncResult``); they
print as a table in a terminal and in Jupyter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EntityResult:
    entity: str
    status: str = "pending"  # success, failed, cancelled
    records: int = 0
    rejected: int = 0
    requests: int = 0
    tokens: int = 0
    retries: int = 0
    duration_ms: int = 0
    full_pass: bool = False
    flagged_gone: int = 0
    error: str | None = None
    rejections: list[str] = field(default_factory=list)  # the first few, with their ids
    unreconciled: bool = False  # a full pass that flagged nothing: refusals had no usable id

    @property
    def warning(self) -> str | None:
        """What a user should know about a run that succeeded: records refused."""
        if not self.rejected:
            return None
        shown = "; ".join(self.rejections)
        unnamed = self.rejected - len(self.rejections)
        more = f"; {unnamed} more" if unnamed else ""
        unreconciled = (
            "; nothing flagged as gone: a refused record without an id may be any of them"
            if self.unreconciled
            else ""
        )
        return (
            f"{self.rejected} record(s) refused, fetched again by the next run: {shown}"
            + more
            + unreconciled
        )


@dataclass
class SyncResult:
    run_id: int
    mode: str
    status: str = "running"  # success, partial, failed, cancelled
    started_at: str = ""
    duration_ms: int = 0
    entities: dict[str, EntityResult] = field(default_factory=dict)
    history: Any = None  # backfill.HistoryResult, when the run read deal history

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def records(self) -> int:
        return sum(e.records for e in self.entities.values())

    @property
    def requests(self) -> int:
        return sum(e.requests for e in self.entities.values())

    @property
    def tokens(self) -> int:
        return sum(e.tokens for e in self.entities.values())

    @property
    def errors(self) -> dict[str, str]:
        return {name: e.error for name, e in self.entities.items() if e.error}

    def rows(self) -> list[dict[str, Any]]:
        """One dict per entity, ready for a table or ``pandas.DataFrame``."""
        return [
            {
                "entity": e.entity,
                "status": e.status,
                "records": e.records,
                "requests": e.requests,
                "tokens": e.tokens,
                "seconds": round(e.duration_ms / 1000, 2),
                "error": e.error or "",
            }
            for e in self.entities.values()
        ]

    def __str__(self) -> str:
        lines = [
            f"sync #{self.run_id} ({self.mode}): {self.status}, {self.records} records, "
            f"{self.requests} requests, {self.tokens} tokens, {self.duration_ms / 1000:.1f}s"
        ]
        for row in self.rows():
            error = f"  {row['error']}" if row["error"] else ""
            lines.append(
                f"  {row['entity']:<20} {row['status']:<9} {row['records']:>8} records "
                f"{row['requests']:>5} requests{error}"
            )
        if self.history is not None and self.history.status != "skipped":
            lines.append(f"  {self.history}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from html import escape

        head = "".join(f"<th>{escape(k)}</th>" for k in self.rows()[0]) if self.entities else ""
        body = "".join(
            "<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row.values()) + "</tr>"
            for row in self.rows()
        )
        summary = escape(str(self).splitlines()[0])
        return f"<p>{summary}</p><table><tr>{head}</tr>{body}</table>"


@dataclass(frozen=True)
class ProgressEvent:
    entity: str
    records: int
    requests: int
    done: bool = False
    status: str = "running"
    error: str | None = None


ProgressCallback = Callable[[ProgressEvent], None]

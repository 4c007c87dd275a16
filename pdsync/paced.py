"""Paced passes: a whole list read a few pages a run, from where the last run stopped.

Projects and tasks have no ``updated_since``: each refresh reads them whole. A large account
has pages of them, more than an incremental run may spend (plan.RUN_REQUESTS). On the hourly
rotation such a list is read at most the pages its run has room for; the v2 cursor where it
stopped is kept (``sync_streams``, under the stream's key plus ``#cursor``; ``""`` once the
stream reached its end) and the next run carries on from it. Ids seen are kept on disk
(``_pdsync_seen``), and only a pass that read every stream to its end flags what it did not
see as gone. Of several streams (active and archived projects), a record may move from one to
the other between the runs of a pass and be missed by both cursors: what a complete pass did
not see is asked about by id first (``EntitySpec.record_path``, a token each; usually the few
records deleted or moved since the last pass), and only what is not there, or says it is
deleted, is flagged. A failed pass starts again from the beginning.
"""

from __future__ import annotations

from .entities import EntitySpec
from .store import Store

DONE = ""  # the stream reached its end in this pass


def capable(spec: EntitySpec, fields_tables: set[str]) -> bool:
    """A whole list on a refresh interval, cursor-paged (v2), keyed by integer ids; of
    several streams, only with a GET of one record to confirm what no stream listed."""
    return (
        spec.refresh is not None
        and not spec.incremental
        and not spec.dependent
        and spec.name not in fields_tables
        and spec.columns.get(spec.pk) is int
        and all(not stream.is_v1 for stream in spec.streams)
        and (len(spec.streams) == 1 or spec.record_path is not None)
    )


def to_confirm(store: Store, spec: EntitySpec) -> list[int]:
    """Ids a complete pass did not see, to ask about one by one before flagging them: a
    record that moved from one stream to another mid-pass (a project archived, or brought
    back) can be behind the cursor of the stream it left and of the one it joined. One
    stream in id order misses nothing that stayed listed: then none is asked about."""
    if len(spec.streams) == 1 or spec.record_path is None:
        return []
    return store.unseen(spec)


def cursor_key(stream_key: str) -> str:
    return f"{stream_key}#cursor"


def in_progress(store: Store, spec: EntitySpec) -> bool:
    """A pass started and not finished: the next run carries on with it first."""
    return any(store.watermark(spec.name, cursor_key(s.key)) is not None for s in spec.streams)


def resume_points(store: Store, spec: EntitySpec) -> dict[str, str | None]:
    """Per stream key: the cursor to carry on from, DONE, or None (from the beginning)."""
    points = {s.key: store.watermark(spec.name, cursor_key(s.key)) for s in spec.streams}
    if all(point is None for point in points.values()):
        store.clear_seen(spec)  # a new pass
        store.start_pass(spec.name)
    return points


def complete(store: Store, spec: EntitySpec) -> bool:
    return all(store.watermark(spec.name, cursor_key(s.key)) == DONE for s in spec.streams)


def forget(store: Store, spec: EntitySpec) -> None:
    """Drop a pass in progress: the next one starts from the beginning."""
    store.db.execute(
        "delete from sync_streams where entity_type = ? and stream like '%#cursor'", [spec.name]
    )
    store.clear_seen(spec)

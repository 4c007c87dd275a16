"""The ceiling of one SQLite writer for a first load of deals, without any Python work per
record: 100k deal rows, built beforehand as tuples, inserted in id order with executemany
(the real upsert statement, one commit per 500-row page) into the real deals table
(schema.prepare), then deals' indexes, full-text and totals built (schema.ensure_indexes).
Also times the per-page Python work a second process would take over (orjson.loads of the
raw page bytes, then to_row) and the cost of handing row tuples back (pickle).

    python benchmarks/writer_ceiling.py --deals 100000
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from process_split import start_fake  # noqa: E402


def pages(url: str, token: str) -> list[bytes]:
    import httpx

    out, cursor = [], None
    with httpx.Client(base_url=url, headers={"x-api-token": token}, timeout=30) as http:
        while True:
            params = {"limit": 500, "sort_by": "id"}
            if cursor:
                params["cursor"] = cursor
            body = http.get("/api/v2/deals", params=params).content
            out.append(body)
            import orjson

            cursor = (orjson.loads(body).get("additional_data") or {}).get("next_cursor")
            if not cursor:
                return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deals", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--whole", action="store_true", help="every entity, not deals alone")
    args = parser.parse_args()
    import orjson
    import sqlite_utils

    import pdsync
    from pdsync import schema
    from pdsync.entities import builtin_entities
    from pdsync.records import to_row
    from pdsync.store import Store, _upsert_sql

    server, here, info = start_fake(args.deals)
    tmp = tempfile.mkdtemp()
    loaded = os.path.join(tmp, "loaded.db")
    pdsync.sync(
        loaded,
        token=info["token"],
        base_url=info["url"],
        auth_path=None,
        only=None if args.whole else ["deals"],
        history_budget=0,
    )
    raw = pages(info["url"], info["token"])
    here.send(("stop", None))
    server.join(10)
    spec = next(s for s in builtin_entities() if s.name == "deals")
    src = sqlite_utils.Database(loaded)
    cols = tuple(r[1] for r in src.execute("pragma table_info(deals)"))
    rows = src.execute(
        f"select {', '.join(f'[{c}]' for c in cols)} from deals order by id"
    ).fetchall()
    print(
        f"load average {os.getloadavg()}; {len(rows):,} deal rows of {len(cols)} columns; "
        f"{len(raw)} raw pages, {sum(map(len, raw)) / 1e6:.1f} MB"
    )
    # The custom-field map the sync used, for to_row
    from pdsync.records import CustomFieldMap

    custom = None
    if spec.fields_table and spec.fields_table in src.table_names():
        custom = CustomFieldMap.from_definitions(list(src[spec.fields_table].rows))
    print(f"custom fields: {len(custom.columns()) if custom else 0} columns")
    specs = [s for s in builtin_entities() if s.name in src.table_names() and src[s.name].count]
    if not args.whole:
        specs = [spec]
    tables = {}
    for s in specs:
        names = tuple(r[1] for r in src.execute(f"pragma table_info([{s.name}])"))
        order = f"[{s.pk}]"
        tables[s.name] = (
            names,
            src.execute(
                f"select {', '.join(f'[{c}]' for c in names)} from [{s.name}] order by {order}"
            ).fetchall(),
        )
    print(
        "rows:",
        {n: len(r) for n, (c, r) in tables.items()},
        sum(len(r) for c, r in tables.values()),
    )
    for rnd in range(args.rounds):
        path = os.path.join(tmp, f"c{rnd}.db")
        db = sqlite_utils.Database(path)
        schema.prepare(db, builtin_entities())
        store = Store(db)
        ins = idx = inscpu = idxcpu = 0.0
        steps = {}
        for s in specs:
            names, data = tables[s.name]
            store.ensure_columns(s.name, {c: str for c in names})
            sql = _upsert_sql(s, names)
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(0, len(data), 500):
                with db.conn:
                    db.conn.executemany(sql, data[i : i + 500])
            t1, c1 = time.perf_counter(), time.process_time()
            for step in schema.index_steps(db, s):
                a = time.perf_counter()
                with db.conn:
                    step()
                steps[s.name] = steps.get(s.name, []) + [round(time.perf_counter() - a, 3)]
            t2, c2 = time.perf_counter(), time.process_time()
            ins += t1 - t0
            idx += t2 - t1
            inscpu += c1 - c0
            idxcpu += c2 - c1
        total = sum(len(r) for c, r in tables.values())
        print(
            f"round {rnd + 1} (load {os.getloadavg()[0]:.2f}): "
            f"insert {ins:.2f} s ({inscpu:.2f} CPU), "
            f"indexes+fts+totals {idx:.2f} s ({idxcpu:.2f} CPU), SQLite total {ins + idx:.2f} s "
            f"= {total / (ins + idx):,.0f} rows/s; budget at 30,000/s {total / 30000:.2f} s"
        )
        if rnd == 0:
            print("  index steps (s):", steps)
        db.close()
        os.remove(path)
    decoded = built = None
    t2 = time.perf_counter()
    decoded = [orjson.loads(b)["data"] for b in raw]
    t3 = time.perf_counter()
    built = [[tuple(to_row(spec, r, custom).values()) for r in page] for page in decoded]
    t4 = time.perf_counter()
    blobs = [pickle.dumps(p, protocol=5) for p in built]
    t5 = time.perf_counter()
    [pickle.loads(b) for b in blobs]
    t6 = time.perf_counter()
    n = sum(map(len, decoded))
    print(
        f"per deal, Python work: orjson {1e6 * (t3 - t2) / n:.1f} us, "
        f"to_row {1e6 * (t4 - t3) / n:.1f} us, "
        f"pickle dumps {1e6 * (t5 - t4) / n:.1f} us, loads {1e6 * (t6 - t5) / n:.1f} us "
        f"({sum(map(len, blobs)) / n:.0f} bytes a row pickled, "
        f"{sum(map(len, raw)) / n:.0f} as JSON)"
    )


if __name__ == "__main__":
    main()

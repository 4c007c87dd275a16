"""Growth: how a first sync and the canned queries scale with the size of the account.

    python benchmarks/growth.py                                  # 25k/100k/400k, queries 100k/1M
    python benchmarks/growth.py --sync 25000 100000 --queries 100000 --plot docs/growth.png

For each size in --sync: a first sync of the whole account from the fake Pipedrive (fake in
its own process, sync in a fresh one: sync_bench.py's method), wall time and peak RSS. For
each size in --queries: a database of that many deals built the same way, served by a real
Datasette with pdsync serve's arguments, every canned query timed over HTTP (query_bench.py's
method). Prints both tables and the growth exponent between successive sizes (time ~ n^k:
k = 1 is linear), saves the figures next to --plot as JSON, and draws --plot when matplotlib
is installed (pip install -e '.[bench]').
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import query_bench  # noqa: E402
import sync_bench  # noqa: E402


def exponent(n1: float, y1: float, n2: float, y2: float) -> float:
    return math.log(y2 / y1) / math.log(n2 / n1)


def sync_growth(sizes: list[int], seed: int) -> list[dict]:
    rows = []
    for n in sizes:
        print(f"First sync of {n:,} deals...", flush=True)
        r = sync_bench.bench(n, [], seed)
        full = r["full"]
        if not full["ok"]:
            raise SystemExit(f"sync of {n:,} deals failed: {full['errors']}")
        rows.append(
            {
                "deals": n,
                "records": full["records"],
                "seconds": full["seconds"],
                "rss_mb": full["peak_rss_mb"],
                "deals_only_seconds": r["deals_only"]["seconds"],
                "deals_only_rss_mb": r["deals_only"]["peak_rss_mb"],
            }
        )
    return rows


def query_growth(sizes: list[int], seed: int, runs: int, warmup: int) -> dict[int, list[dict]]:
    results = {}
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="pdsync-growth-") as tmp:
            db = Path(tmp) / "pipedrive.db"
            query_bench.build_database(db, n, seed)
            log = Path(tmp) / "datasette.log"
            results[n] = query_bench.serve_and_time(db, log, n, warmup, runs)
    return results


def print_sync(rows: list[dict]) -> None:
    print("\nFirst sync of the whole account")
    print(f"{'deals':>9} {'records':>10} {'seconds':>8} {'records/s':>9} {'peak RSS':>9} {'k':>6}")
    for i, r in enumerate(rows):
        k = ""
        if i:
            p = rows[i - 1]
            k = f"{exponent(p['deals'], p['seconds'], r['deals'], r['seconds']):.2f}"
        print(
            f"{r['deals']:>9,} {r['records']:>10,} {r['seconds']:>8.1f} "
            f"{r['records'] / r['seconds']:>9,.0f} {r['rss_mb']:>7.0f}MB {k:>6}"
        )
    print("(k: time grows as deals^k between this size and the one above)")


def print_queries(results: dict[int, list[dict]]) -> None:
    sizes = sorted(results)
    print("\nCanned queries, median ms per request (p95)")
    labels = [r["label"] for r in results[sizes[0]]]
    width = max(len(label) for label in labels)
    print(f"{'request':<{width}} " + " ".join(f"{n:>17,}" for n in sizes) + "   ratio")
    for i, label in enumerate(labels):
        cells = [results[n][i] for n in sizes]
        ratio = cells[-1]["median"] / cells[0]["median"]
        print(
            f"{label:<{width}} "
            + " ".join(f"{c['median']:>8.1f} ({c['p95']:>6.1f})" for c in cells)
            + f"  {ratio:>5.1f}x"
        )
    for n in sizes:
        medians = [r["median"] for r in results[n]]
        print(
            f"{n:>9,} deals: median of medians {statistics.median(medians):.1f} ms, "
            f"slowest median {max(medians):.1f} ms"
        )


def plot(rows: list[dict], results: dict[int, list[dict]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"\n(no plot: matplotlib is not installed; pip install -e '.[bench]' for {path})")
        return
    from matplotlib.ticker import FuncFormatter

    thousands = FuncFormatter(lambda x, _: f"{x / 1000:,.0f}k")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    deals = [r["deals"] for r in rows]
    time_line = left.plot(deals, [r["seconds"] for r in rows], "o-", label="seconds")
    left.set_xlabel("deals")
    left.set_ylabel("seconds")
    left.set_ylim(0, None)
    left.xaxis.set_major_formatter(thousands)
    left.set_title("First sync of the whole account")
    memory = left.twinx()
    rss_line = memory.plot(
        deals, [r["rss_mb"] for r in rows], "s--", color="tab:orange", label="peak RSS, MB"
    )
    memory.set_ylabel("peak RSS, MB", color="tab:orange")
    memory.set_ylim(0, max(r["rss_mb"] for r in rows) * 1.5)
    left.legend(handles=time_line + rss_line, loc="upper left")
    sizes = sorted(results)
    for i in range(len(results[sizes[0]]) if sizes else 0):
        right.plot(sizes, [results[n][i]["median"] for n in sizes], ".-", alpha=0.6)
    right.axhline(query_bench.TARGET_MEDIAN_MS, color="grey", linestyle=":", label="target")
    right.set_xscale("log")
    right.xaxis.set_major_formatter(thousands)
    right.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
    right.set_xlabel("deals")
    right.set_ylabel("median ms per request")
    right.set_title("Canned queries through Datasette")
    right.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"\nPlot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sync", type=int, nargs="+", default=[25_000, 100_000, 400_000])
    parser.add_argument("--queries", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=30, help="timed requests per URL (30)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=Path("docs/growth.png"))
    parser.add_argument(
        "--replot", type=Path, metavar="JSON", help="print and plot a saved run, measure nothing"
    )
    args = parser.parse_args()

    if args.replot:
        saved = json.loads(args.replot.read_text())
        rows, results = saved["sync"], {int(n): r for n, r in saved["queries"].items()}
    else:
        rows = sync_growth(args.sync, args.seed)
        results = query_growth(args.queries, args.seed, args.runs, args.warmup)
        saved_to = args.plot.with_suffix(".json")
        saved_to.parent.mkdir(parents=True, exist_ok=True)
        saved_to.write_text(json.dumps({"sync": rows, "queries": results}, indent=1))
        print(f"Figures saved to {saved_to} (--replot {saved_to} prints and plots them again)")
    print_sync(rows)
    if results:
        print_queries(results)
    plot(rows, results, args.plot)


if __name__ == "__main__":
    main()

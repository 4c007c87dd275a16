"""serve_load.py's readers on two checkouts of pdsync at once, taking turns: an A/B that a
busy machine cannot tilt.

    python benchmarks/serve_load_ab.py /work/before --db /work/sl100k/acme.db
    python benchmarks/serve_load_ab.py BEFORE --db DB --clients 8 32 --rounds 6 --turn 5

Both servers (``BEFORE/.venv/bin/python -m pdsync serve`` and this checkout's) serve the same
database, with the same people and tokens. For each client count and mix (with HTML pages,
and ``--data-only``'s), the readers go to one server for ``--turn`` seconds, then the other,
``--rounds`` times, after one warm-up turn each; each side's figures are over all its turns,
so load from elsewhere falls on both alike. ``CPU ms``: the server process's CPU time per
answer (user + system), which the clients' own CPU (they share the machine) does not
blur. Printed with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readers_under_load import percentile  # noqa: E402
from serve_load import Server, _client, for_seconds, the_mix  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """A process's CPU time (user + system) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def turn(server, mix, clients, seconds, samples, errors, hits, positions) -> tuple:
    """One turn; each client goes on where it left off on this server (``positions``), so
    the turns together walk the whole mix as one long run would. (wall, server CPU) s."""
    until = for_seconds(seconds)
    cpu = cpu_seconds(server.process.pid)

    async def run() -> None:
        await asyncio.gather(
            *(
                _client(server, mix, i, clients, until, samples, errors, hits, positions)
                for i in range(clients)
            )
        )

    started = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - started, cpu_seconds(server.process.pid) - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="the other checkout, with its .venv")
    parser.add_argument("--db", type=Path, required=True, help="serve_load.py's database")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--turn", type=float, default=5.0, help="seconds per turn (5)")
    args = parser.parse_args()

    log = Path(tempfile.mkdtemp(prefix="pdsync-serve-ab-")) / "log.txt"
    python = str(args.before.resolve() / ".venv" / "bin" / "python")
    sides = {"before": Server(args.db, log, python=python), "after": Server(args.db, log)}
    try:
        full = the_mix(args.db)
        mixes = {
            "html+data": full,
            "data-only": [(label, path) for label, path in full if ".json" in path],
        }
        print(
            f"{'mix':<10} {'clients':>7} {'side':<7} {'requests':>8} {'req/s':>7} "
            f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} {'cached':>6} "
            f"{'CPU ms':>7}  load"
        )
        for name, mix in mixes.items():
            for clients in args.clients:
                figures = {side: ([], [], [], 0.0, 0.0) for side in sides}
                positions = {side: {} for side in sides}
                for side, server in sides.items():  # warm-up, not counted
                    turn(server, mix, clients, args.turn, [], [], [], positions[side])
                for _ in range(args.rounds):
                    for side, server in sides.items():
                        samples, errors, hits, seconds, cpu = figures[side]
                        took, used = turn(
                            server, mix, clients, args.turn, samples, errors, hits, positions[side]
                        )
                        figures[side] = (samples, errors, hits, seconds + took, cpu + used)
                for side, (samples, errors, hits, seconds, cpu) in figures.items():
                    print(
                        f"{name:<10} {clients:>7} {side:<7} {len(samples):>8} "
                        f"{len(samples) / seconds:>7.1f} {percentile(samples, 0.5):>7.0f} "
                        f"{percentile(samples, 0.95):>7.0f} {percentile(samples, 0.99):>7.0f} "
                        f"{len(errors):>6} {sum(hits) / max(1, len(hits)):>6.0%} "
                        f"{cpu * 1000 / max(1, len(samples)):>7.2f}  "
                        f"{os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
                    for kind in sorted(set(errors))[:3]:
                        print(f"{'':<10} error: {kind}")
    finally:
        for server in sides.values():
            server.stop()


if __name__ == "__main__":
    main()

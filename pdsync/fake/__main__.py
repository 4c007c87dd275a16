"""Serve a demo company: ``python -m pdsync.fake --deals 100000 --seed 1 --port 8765``."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from . import FakePipedrive, FakeServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pdsync.fake", description=__doc__)
    parser.add_argument("--deals", type=int, default=2000, help="number of deals (default 2000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--burst", type=int, default=None, help="requests per 2 s per token")
    parser.add_argument("--token", default="demo-token")
    args = parser.parse_args(argv)

    # `kill` should clean up like Ctrl-C does (the temp database can be large).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    started = time.perf_counter()
    fake = FakePipedrive(
        deals=args.deals,
        seed=args.seed,
        token=args.token,
        burst_limit=args.burst,
        latency=args.latency,
    )
    built = time.perf_counter() - started
    server = FakeServer(fake, host=args.host, port=args.port).start()
    print(f"Fake Pipedrive with {args.deals} deals (built in {built:.1f}s)", flush=True)
    print(f"URL:   {server.url}", flush=True)
    print(f"Token: {args.token}", flush=True)
    print("Ctrl-C to stop.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        fake.close()


if __name__ == "__main__":
    main()

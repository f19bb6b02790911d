"""Profile the intake hot path: `make bench-profile` (see docs/performance.md).

Starts intake alone (production settings, like `bench.run`) on its own
databases, drives closed-loop `POST /v1/complaints` at ``--concurrency``, and
meanwhile records intake and the database server with py-spy. Prints the rate,
the CPU each process spent per request, and the functions with the largest
inclusive share of samples for both.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.run import (
    VENV_BIN,
    Run,
    Service,
    cpu_s,
    database_pid,
    drop_run_databases,
    infra_env,
    post_load,
)

PORT = 18101


# Frames worth showing for intake: the project's code and the libraries it calls,
# not the ASGI server and middleware every request passes through.
INTAKE_FRAMES = ("intake/", "complaints_shared/", "pymongo/", "pydantic", "jwt/", "aiokafka/")


def top_functions(raw: Path, *, limit: int, keep: tuple[str, ...] = ()) -> list[tuple[float, str]]:
    """Inclusive share of samples per function from py-spy's ``--format raw`` output.

    ``keep``: only frames whose file path contains one of these (all frames when empty);
    thread bootstrap frames are always left out.
    """
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        names = set()
        for frame in stack.split(";"):
            function, _, where = frame.partition(" (")
            path = where.split(":")[0]
            if path.endswith("threading.py") or (keep and not path.startswith(keep)):
                continue
            names.add(f"{function} ({path.rsplit('/', 1)[-1]})")
        for name in names:
            inclusive[name] += samples
    return [(100 * n / total, name) for name, n in inclusive.most_common(limit)] if total else []


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--jwt-secret", default="bench-secret-0123456789abcdef-0123")
    args = parser.parse_args()
    run = Run(args=argparse.Namespace(workers=1, jwt_secret=args.jwt_secret), infra=infra_env())
    intake = Service("intake", PORT, run.env("intake"))
    intake.start()
    try:
        await intake.wait_ready()
        url = f"http://127.0.0.1:{PORT}"
        # Warm up: the first requests create indexes' first entries and counters.
        await post_load(url=url, token=run.token(), concurrency=1, duration_s=2, seed=1)
        database, service = database_pid(), intake.process.pid if intake.process else None
        with tempfile.TemporaryDirectory() as tmp:
            raws = {"intake": Path(tmp) / "intake.raw", "database": Path(tmp) / "database.raw"}
            record_s = max(1, int(args.duration_s) - 4)
            spies = [
                await asyncio.create_subprocess_exec(
                    str(VENV_BIN / "py-spy"),
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(record_s),
                    "--format",
                    "raw",
                    "--output",
                    str(raws[name]),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                for name, pid in (("intake", service), ("database", database))
            ]
            cpu_before = {"intake": cpu_s(service), "database": cpu_s(database)}
            started = time.monotonic()
            load = await post_load(
                url=url,
                token=run.token(),
                concurrency=args.concurrency,
                duration_s=args.duration_s,
                seed=2,
            )
            elapsed = time.monotonic() - started
            per_request = {
                name: round(1000 * (cpu_s(pid) - cpu_before[name]) / max(1, load["accepted"]), 1)
                for name, pid in (("intake", service), ("database", database))
            }
            for spy in spies:
                await spy.wait()
            print(
                f"intake alone, c={args.concurrency}: {load['requests_per_s']} req/s over "
                f"{elapsed:.0f} s, p50 {load['p50_ms']} ms, errors {load['errors']}; "
                f"CPU per request: intake {per_request['intake']} ms, "
                f"database {per_request['database']} ms"
            )
            for name, raw in raws.items():
                keep = INTAKE_FRAMES if name == "intake" else ()
                print(f"\n{name} (py-spy, {record_s} s, inclusive share of busy samples):")
                for share, function in top_functions(raw, limit=args.top, keep=keep):
                    print(f"  {share:5.1f}%  {function}")
    finally:
        intake.stop()
        await drop_run_databases(run)


if __name__ == "__main__":
    asyncio.run(main())

"""`python -m bench.chaos`: the crash harness of tests/test_crash.py, longer and louder.

    python -m bench.chaos --duration 120 --kills 10 [--jobs 200] [--seed N] [--workdir DIR]

Prints progress, then the counts table; exits 1 when any invariant was violated (the table lists them),
0 otherwise. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path

from bench.harness import ChaosOptions, run_chaos
from bench.processes import tail


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs to create (default 200)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load and kills (default 120)")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs during the window (default 10)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the harness's random choices")
    parser.add_argument("--hostile-rate", type=float, default=50.0, help="hostile webhooks per second")
    parser.add_argument("--settle", type=float, default=120.0, help="bound on settling after the window (s)")
    parser.add_argument("--job-timeout", type=float, default=20.0, help="RECEIVER_JOB_TIMEOUT_S of the server")
    parser.add_argument(
        "--database-url", default=None, help="a PostgreSQL URL to run on (its database must be empty or migrated)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="a fresh directory to keep the database and server log in"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.duration <= 1 or args.kills < 0:
        parser.error("--jobs >= 1, --duration > 1 and --kills >= 0, please")
    if args.workdir is not None and (args.workdir / "receiver.db").exists():
        parser.error(f"{args.workdir} already holds a receiver.db from another run; pick a fresh --workdir")
    return args


async def main(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    with tempfile.TemporaryDirectory(prefix="receiver-chaos-") as scratch:
        workdir = args.workdir or Path(scratch)
        options = ChaosOptions(
            workdir=workdir,
            jobs=args.jobs,
            duration_s=args.duration,
            kills=args.kills,
            seed=seed,
            settle_s=args.settle,
            job_timeout_s=args.job_timeout,
            hostile_per_s=args.hostile_rate,
            database_url=args.database_url,
            log=lambda line: print(line, flush=True),
        )
        report = await run_chaos(options)
        print(report.table())
        if not report.ok:
            print(f"server log ({workdir / 'serve.log'}):\n{tail(workdir / 'serve.log')}")
            print(
                f"rerun: python -m bench.chaos --seed {seed} --jobs {args.jobs} --duration {args.duration:g}"
                f" --kills {args.kills}"
            )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))

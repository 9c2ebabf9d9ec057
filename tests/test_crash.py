"""Crash safety end to end: `receiver serve` killed with SIGKILL under load and hostile webhooks (bench/harness.py)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from bench.harness import ChaosOptions, run_chaos, tail

SEED_ENV = "CHAOS_SEED"  # set it to replay a run: the seed is printed (and shown on failure)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_kill_9_under_load_loses_nothing_and_doubles_nothing(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """On SQLite (a file in `tmp_path`) and on PostgreSQL (a fresh database, `postgres_url`): drive 60 fal
    jobs through a `receiver serve` subprocess while the fal emulator sends real signed webhooks (some
    duplicated, late, dropped, or model errors), a hostile sender posts forged, stale, wrong-token, mismatched
    and replayed webhooks, and the server (the web process and its worker child: its whole process group) is
    SIGKILLed 3 times in 15 s and restarted on the same port. Once the emulator's retries and the reconciler
    have finished, this proves:

    - every fal request for which any sender got a 2xx has exactly one webhook row in the inbox, holding
      the exact bytes fal sent, bound to the right job; no inbox key appears twice;
    - every job ends in exactly one final state, its status never moved backwards while we watched, no job
      was submitted to fal twice, and the final state is the one fal's result implies (a job whose submit
      was cut by a kill before any answer is never resent and times out);
    - forged, stale, wrong-token and mismatched webhooks got 401/403/409 and changed nothing (no inbox row,
      no job error carries their bodies); genuine replays got a 2xx;
    - each subscriber got, per job, exactly one `webhook-id` for the job's final event, correctly signed
      (re-sends of the same `webhook-id` after a kill or a 503 are allowed and counted);
    - every succeeded job has its images stored, each blob on disk complete under its own sha256;
    - no task is left pending, leased or dead, every delivery is delivered, and SIGTERM exits 0.
    """
    seed = int(os.environ.get(SEED_ENV) or random.randrange(2**32))
    print(f"chaos seed {seed} (replay with {SEED_ENV}={seed})")
    lines: list[str] = []
    database_url = str(request.getfixturevalue("postgres_url")) if backend == "postgres" else None
    options = ChaosOptions(
        workdir=tmp_path, jobs=60, duration_s=15.0, kills=3, seed=seed, database_url=database_url, log=lines.append
    )
    report = await run_chaos(options)
    print(report.table())
    replay = f"replay with {SEED_ENV}={seed}"
    assert report.ok, "\n".join([replay, report.table(), *lines, "server log:", tail(tmp_path / "serve.log")])
    # The run proves something only if its chaos landed: kills in the middle of a task, hostile webhooks refused.
    assert report.kills_mid_task > 0, f"no kill landed while a task was leased ({replay})\n{report.table()}"
    assert report.hostile_refused > 0, f"no hostile webhook was refused ({replay})\n{report.table()}"

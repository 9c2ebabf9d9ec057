"""`scripts/bench`: ingest throughput and latency of every deployment shape against the baselines, in one run.

Each shape (`bench.shapes`) runs on loopback in turn and is driven by wrk (one thread, 64 connections) with
distinct, validly signed fal webhooks: first flat out (saturation), then paced at 50% of its saturation rate.
A receiver shape runs on a database of its own, seeded through the storage layer; after its burst the
follow-up work must drain (timed), and it takes 100k more webhooks while the RSS of each of its processes is
sampled. CPU (cores used, every process of the shape summed) and RSS come from /proc. Results:
bench/results.json and docs/benchmarks.md (a full run; `--shapes` runs a subset and only prints, unless
`--save`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import deployments
from bench.deployments import Meter, Shape, backlog, rss_sample
from bench.postgres import PostgresCluster
from bench.processes import ROOT, jwks_server, pids
from bench.results import machine, render_shapes, replace_block, write_json
from bench.wrk import CONNECTIONS, plan_jobs, seed_jobs, sign_webhooks, webhook_items, write_request_file, wrk
from receiver.ingest.signatures import FAL_TOLERANCE_S, public_jwk

BASELINES = ("bare", "verify", "verify2", "naive")
RECEIVERS = ("sqlite", "pg1", "pg2")
OPTIONAL = ("sqlite-vthread",)  # the receiver verifying on a second thread: on request only
GAP = 1_000  # webhooks skipped between two wrk runs (those in flight when the previous one stopped)
RSS_CHUNK_S = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--jobs", type=int, default=200_000, help="pre-created jobs (distinct webhooks) per database")
    parser.add_argument("--rss-requests", type=int, default=100_000, help="webhooks over which RSS must stay flat")
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="seconds to wait for the backlog")
    parser.add_argument(
        "--shapes",
        default=",".join(BASELINES + RECEIVERS),
        help=f"comma-separated subset of {', '.join(BASELINES + RECEIVERS + OPTIONAL)} (default: all but the last)",
    )
    parser.add_argument("--save", action="store_true", help="write results.json and the docs even for a subset")
    args = parser.parse_args()
    selected = [name.strip() for name in args.shapes.split(",") if name.strip()]
    unknown = set(selected) - set(BASELINES + RECEIVERS + OPTIONAL)
    if unknown:
        parser.error(f"unknown shapes: {', '.join(sorted(unknown))}")
    key = Ed25519PrivateKey.generate()
    jwk = public_jwk(key)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="receiver-bench-") as tmp, jwks_server(Path(tmp), jwk) as jwks_url:
        results = asyncio.run(run_all(args, selected, key, jwk["x"], Path(tmp), jwks_url))
    results["wall_s"] = round(time.monotonic() - began)
    results["argv"] = "`python -m bench.run " + " ".join(sys.argv[1:]) + "`" if sys.argv[1:] else "`scripts/bench`"
    results["load_average"] = [round(value, 1) for value in os.getloadavg()]  # how shared the machine was
    full = set(BASELINES + RECEIVERS) <= set(selected)
    write_report(results, save=full or args.save)


class Requests:
    """The run's pre-signed webhooks as wrk's two requests files (the receivers' paths carry job ids and
    tokens; the baselines' do not), signed again when their timestamp would leave fal's +-300 s window."""

    def __init__(self, data: Path, key: Ed25519PrivateKey, planned: list[tuple[str, str]]) -> None:
        self.data, self.key = data, key
        self.request_ids = [request_id for _, request_id in planned]
        self.receiver_paths = [path for path, _ in webhook_items(planned)]
        self.receiver_file, self.baseline_file = data / "receiver.tsv", data / "baseline.tsv"
        self.valid_until = 0.0

    def file_for(self, shape: Shape, *, lasting_s: float) -> Path:
        """The shape's requests file, valid for a wrk run of `lasting_s` from now (signed again if need be)."""
        if time.time() + lasting_s + 30 > self.valid_until:
            self.sign()
        return self.receiver_file if shape.receiver else self.baseline_file

    def sign(self) -> None:
        print(f"signing {len(self.request_ids)} webhooks ...", flush=True)
        ts = int(time.time()) + FAL_TOLERANCE_S - 20  # valid from 20 s ago to almost 10 min from now
        signed = sign_webhooks(self.key, self.request_ids, ts)
        write_request_file(self.receiver_file, self.receiver_paths, signed)
        write_request_file(self.baseline_file, ["/webhooks/fal/x"] * len(signed), signed)
        self.valid_until = ts + FAL_TOLERANCE_S


async def run_all(
    args: argparse.Namespace, selected: list[str], key: Ed25519PrivateKey, jwk_x: str, data: Path, jwks_url: str
) -> dict[str, Any]:
    planned = plan_jobs(args.jobs)
    requests = Requests(data, key, planned)
    results: dict[str, Any] = {"machine": machine(), "duration_s": args.duration, "shapes": {}}
    baselines = {
        name: deployments.baseline(name.rstrip("2"), 2 if name.endswith("2") else 1, jwk_x=jwk_x, data=data)
        for name in BASELINES
        if name in selected
    }
    for name, shape in baselines.items():
        print(f"{shape.name}: saturation ...", flush=True)
        results["shapes"][name] = {"name": shape.name, "saturation": await measure_alone(shape, requests, args)}
    with postgres_cluster(needed=any(name.startswith("pg") for name in selected)) as cluster:
        seeded = Seeded(data, planned, cluster)
        for name in [name for name in RECEIVERS + OPTIONAL if name in selected]:
            url, seed_s = await seeded.database(name)
            shape = receiver_shape(name, url=url, data=data, jwks_url=jwks_url, cluster=cluster)
            results["shapes"][name] = {"name": shape.name, "seed_s": seed_s}
            results["shapes"][name].update(await run_receiver(shape, requests, args))
        results["seeding"] = seeded.figures
    # The baselines paced at the rate the SQLite receiver was paced at (the first receiver's otherwise).
    paced = [results["shapes"][name]["half_rate"]["rate"] for name in RECEIVERS + OPTIONAL if name in selected]
    for name, shape in baselines.items():
        if paced:
            print(f"{shape.name}: paced at {paced[0]:.0f}/s ...", flush=True)
            results["shapes"][name]["half_rate"] = await measure_alone(shape, requests, args, rate=paced[0])
    return results


def receiver_shape(name: str, *, url: str, data: Path, jwks_url: str, cluster: PostgresCluster | None) -> Shape:
    if name == "sqlite":
        return deployments.sqlite_default(url=url, data=data, jwks_url=jwks_url)
    if name == "sqlite-vthread":
        return deployments.sqlite_default(url=url, data=data, jwks_url=jwks_url, key=name, RECEIVER_VERIFY_THREADS="1")
    assert cluster is not None
    postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    return deployments.postgres(
        webs=int(name.removeprefix("pg")), key=name, url=url, data=data, jwks_url=jwks_url,
        server_pids=lambda: pids(postmaster),
    )  # fmt: skip


class Seeded:
    """A database of the run's planned jobs for each receiver shape, fresh: SQLite seeds a file per shape;
    PostgreSQL seeds one database once and copies it per shape (`CREATE DATABASE ... TEMPLATE`)."""

    TEMPLATE = "seeded"

    def __init__(self, data: Path, planned: list[tuple[str, str]], cluster: PostgresCluster | None) -> None:
        self.data, self.planned, self.cluster = data, planned, cluster
        self.figures: dict[str, float] = {}
        self.template_ready = False

    async def database(self, name: str) -> tuple[str, float]:
        """The URL of the shape's database and the seconds it took to make it."""
        if not name.startswith("pg"):
            url = f"sqlite:///{self.data / f'{name}.db'}"
            seed_s = round(await seed_jobs(url, self.planned), 1)
            self.figures[f"{name}: {len(self.planned)} jobs"] = seed_s
            print(f"{name}: {len(self.planned)} jobs seeded in {seed_s} s", flush=True)
            return url, seed_s
        assert self.cluster is not None
        if not self.template_ready:
            seed_s = round(await seed_jobs(self.cluster.create_database(self.TEMPLATE), self.planned), 1)
            self.figures[f"postgresql: {len(self.planned)} jobs"] = seed_s
            print(f"postgresql: {len(self.planned)} jobs seeded in {seed_s} s", flush=True)
            self.template_ready = True
        began = time.monotonic()
        url = self.cluster.create_database(name, template=self.TEMPLATE)
        copy_s = round(time.monotonic() - began, 1)
        self.figures[f"{name}: a copy"] = copy_s
        return url, copy_s


@contextlib.contextmanager
def postgres_cluster(*, needed: bool) -> Iterator[PostgresCluster | None]:
    """A PostgreSQL server of the run's own (`bench.postgres`), durable as in production, when a shape
    needs one."""
    if not needed:
        yield None
        return
    with PostgresCluster(durable=True) as cluster:
        yield cluster


async def measure_alone(
    shape: Shape, requests: Requests, args: argparse.Namespace, *, rate: float = 0.0
) -> dict[str, Any]:
    """Start a baseline, drive it for `--duration` s and stop it."""
    await shape.start()
    try:
        await asyncio.sleep(0.5)
        return await load(shape, requests, duration_s=args.duration, offset=0, rate=rate)
    finally:
        await shape.stop()


async def load(shape: Shape, requests: Requests, *, duration_s: int, offset: int, rate: float = 0.0) -> dict[str, Any]:
    """One wrk run against the running shape: wrk's figures plus its processes' cores and peak RSS."""
    file = requests.file_for(shape, lasting_s=duration_s)
    meter = Meter(shape)
    result = await asyncio.to_thread(wrk, shape.port, file, duration_s=duration_s, offset=offset, rate=rate)
    result.update(meter.read())
    result["rate"] = round(rate)
    shape.check_alive()
    return result


async def run_receiver(shape: Shape, requests: Requests, args: argparse.Namespace) -> dict[str, Any]:
    """Saturation, the drain after it, 50% of that rate, then `--rss-requests` more webhooks in chunks with the
    RSS of every process sampled: one start of the shape for all of it."""
    out: dict[str, Any] = {}
    async with backlog(shape.database_url or "") as queue:
        await shape.start()
        try:
            await asyncio.sleep(0.5)
            print(f"{shape.name}: saturation ...", flush=True)
            out["saturation"] = sat = await load(shape, requests, duration_s=args.duration, offset=0)
            sent = sat["requests"] + GAP
            samples = [rss_sample(shape, sent)]
            print(f"{shape.name}: draining ...", flush=True)
            out["drain"] = await queue.wait_drained(timeout_s=args.drain_timeout)
            half = sat["rps"] / 2
            print(f"{shape.name}: paced at {half:.0f}/s ...", flush=True)
            out["half_rate"] = await load(shape, requests, duration_s=args.duration, offset=sent, rate=half)
            sent += out["half_rate"]["requests"] + GAP
            out["half_rate_drain"] = await queue.wait_drained(timeout_s=args.drain_timeout)
            samples.append(rss_sample(shape, sent))
            print(f"{shape.name}: {args.rss_requests} more webhooks, RSS sampled ...", flush=True)
            out["rss"] = await sample_rss(shape, requests, samples, offset=sent, total=args.rss_requests)
            if out["rss"]["samples"][-1]["webhooks"] > args.jobs:
                print(f"{shape.name}: more webhooks than --jobs {args.jobs}: the last ones repeated (duplicates)")
            return out
        finally:
            await shape.stop()


async def sample_rss(
    shape: Shape, requests: Requests, samples: list[dict[str, Any]], *, offset: int, total: int
) -> dict[str, Any]:
    """Drive the shape flat out in short wrk runs until `total` more webhooks went in, sampling every process's
    RSS after each; the growth per process is the last sample minus the first (taken after the warm-up
    burst)."""
    first = samples[0]["webhooks"]
    sent = offset
    while sent - first < total:
        file = requests.file_for(shape, lasting_s=RSS_CHUNK_S)
        result = await asyncio.to_thread(wrk, shape.port, file, duration_s=RSS_CHUNK_S, offset=sent)
        shape.check_alive()
        if result["requests"] == 0:
            break
        sent += result["requests"]
        samples.append(rss_sample(shape, sent))
        sent += CONNECTIONS  # those in flight when wrk stopped
    growth = {label: round(samples[-1]["rss_mb"].get(label, 0.0) - mb, 1) for label, mb in samples[0]["rss_mb"].items()}
    return {"samples": samples, "webhooks": sent - first, "growth_mb": growth}


def write_report(results: dict[str, Any], *, save: bool) -> None:
    seeding = ", ".join(f"{what} in {seconds} s" for what, seconds in results.get("seeding", {}).items())
    load = ", ".join(map(str, results["load_average"]))
    table = render_shapes(results) + (
        f"\n\n{time.strftime('%Y-%m-%d')}: {results['argv']}, {results['wall_s']} s in all on"
        f" {results['machine']['cores']} cores (load average {load} at the end). Seeding: {seeding or '-'}."
    )
    print(table)
    if not save:
        print("(a subset of the shapes: bench/results.json and docs/benchmarks.md left alone; --save writes them)")
        return
    path = ROOT / "bench" / "results.json"
    # Other benchmarks keep their own keys in the same file (`bodies`, `end_to_end`): replace only ours.
    stored = json.loads(path.read_text()) if path.exists() else {}
    for stale in ("runs", "ratios", "rss_growth"):  # this benchmark's keys before the shapes
        stored.pop(stale, None)
    write_json(path, {**stored, **results})
    replace_block("<!-- bench:results -->", table)


if __name__ == "__main__":
    main()

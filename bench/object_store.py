"""Which S3 client for the outputs store: obstore against boto3, measured, not guessed.

    uv run python bench/object_store.py [--n 200] [--runs 5]

Starts a moto S3 server on loopback (tests/s3server.py) and, for each client, a fresh
worker process so that import time and memory are its own. Each worker reports:

- import: wall time of `import obstore` / `import boto3` plus making a client, and the
  resident memory (RSS) just after;
- per operation, medians over `--runs` runs of `--n` calls each, wall time and this
  process's CPU time (`time.process_time`, all threads, so obstore's Rust runtime counts):
  put of 100 KiB (a new key each time), head, ranged read of the first 16 bytes, presign;
- the same operations through `orchestrator.outputs.S3Objects` under Trio (threads,
  sha256, the idempotency HEAD), for the client the package uses;
- RSS before the client is imported (the worker's own baseline) and the peak at the end.

Moto is Python and answers in milliseconds, so wall time here is mostly the server's;
CPU time is the client's own cost, the figure that scales with a busy daemon.
A benchmark reports; it never fails on a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import s3server  # noqa: E402  (the repository root goes on the path first)

PAYLOAD = os.urandom(100 * 1024)
BUCKET = "bench-outputs"


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(op: Callable[[int], object], n: int, runs: int) -> dict[str, float]:
    """Median wall and CPU microseconds per call over `runs` runs of `n` calls."""
    walls, cpus = [], []
    for run in range(runs):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(n):
            op(run * n + i)
        walls.append((time.perf_counter() - wall0) / n * 1e6)
        cpus.append((time.process_time() - cpu0) / n * 1e6)
    return {"wall_us": statistics.median(walls), "cpu_us": statistics.median(cpus)}


def _obstore_worker(endpoint: str, n: int, runs: int) -> dict[str, object]:
    start = time.perf_counter()
    import obstore  # noqa: PLC0415  (the import is what is measured)
    from obstore.store import S3Store  # noqa: PLC0415

    store = S3Store(
        BUCKET,
        prefix="obstore",
        endpoint=endpoint,
        region=s3server.REGION,
        credential_provider=lambda: {
            "access_key_id": s3server.ACCESS_KEY_ID,
            "secret_access_key": s3server.SECRET_ACCESS_KEY,
            "token": None,
            "expires_at": None,
        },
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
        retry_config={"max_retries": 0},
    )
    import_s = time.perf_counter() - start
    rss = _rss_mib()
    obstore.put(store, "fixed.png", PAYLOAD, attributes={"Content-Type": "image/png"})
    ops = {
        "put_100k": lambda i: obstore.put(
            store,
            f"put/{i}.png",
            PAYLOAD,
            attributes={"Content-Type": "image/png", "sha256": "0" * 64},
        ),
        "head": lambda _: obstore.get(store, "fixed.png", options={"head": True}).attributes,
        "read_16": lambda _: bytes(
            obstore.get(store, "fixed.png", options={"range": (0, 16)}).bytes()
        ),
        "presign": lambda _: obstore.sign(store, "GET", "fixed.png", timedelta(seconds=300)),
    }
    return {
        "import_s": import_s,
        "rss_after_import_mib": rss,
        "ops": {name: _measure(op, n, runs) for name, op in ops.items()},
    }


def _boto3_worker(endpoint: str, n: int, runs: int) -> dict[str, object]:
    start = time.perf_counter()
    import boto3  # noqa: PLC0415  (the import is what is measured)
    from botocore.config import Config  # noqa: PLC0415

    s3 = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=s3server.REGION,
        aws_access_key_id=s3server.ACCESS_KEY_ID,
        aws_secret_access_key=s3server.SECRET_ACCESS_KEY,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )
    import_s = time.perf_counter() - start
    rss = _rss_mib()
    s3.put_object(Bucket=BUCKET, Key="boto3/fixed.png", Body=PAYLOAD, ContentType="image/png")
    ops = {
        "put_100k": lambda i: s3.put_object(
            Bucket=BUCKET,
            Key=f"boto3/put/{i}.png",
            Body=PAYLOAD,
            ContentType="image/png",
            Metadata={"sha256": "0" * 64},
        ),
        "head": lambda _: s3.head_object(Bucket=BUCKET, Key="boto3/fixed.png"),
        "read_16": lambda _: s3.get_object(
            Bucket=BUCKET, Key="boto3/fixed.png", Range="bytes=0-15"
        )["Body"].read(),
        "presign": lambda _: s3.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": "boto3/fixed.png"}, ExpiresIn=300
        ),
    }
    return {
        "import_s": import_s,
        "rss_after_import_mib": rss,
        "ops": {name: _measure(op, n, runs) for name, op in ops.items()},
    }


async def _measure_async(
    op: Callable[[int], Awaitable[object]], n: int, runs: int
) -> dict[str, float]:
    """`_measure` for a coroutine, awaited one call at a time inside Trio."""
    walls, cpus = [], []
    for run in range(runs):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(n):
            await op(run * n + i)
        walls.append((time.perf_counter() - wall0) / n * 1e6)
        cpus.append((time.process_time() - cpu0) / n * 1e6)
    return {"wall_us": statistics.median(walls), "cpu_us": statistics.median(cpus)}


def _package_worker(endpoint: str, n: int, runs: int) -> dict[str, object]:
    """S3Objects under Trio: what the daemon pays per call, threads and hashing included."""
    import trio  # noqa: PLC0415

    from orchestrator.outputs import S3Access, S3Location, S3Objects  # noqa: PLC0415

    store = S3Objects(
        S3Location(BUCKET, "package/"),
        access=S3Access(
            endpoint=endpoint,
            region=s3server.REGION,
            access_key_id=s3server.ACCESS_KEY_ID,
            secret_access_key=s3server.SECRET_ACCESS_KEY,
        ),
    )
    fixed = "public/renders/fixed/0.png"
    job = uuid.uuid4()
    ops: dict[str, Callable[[int], Awaitable[object]]] = {
        "put_100k_new": lambda i: store.put(
            f"public/renders/{job}/{i}.png", PAYLOAD, content_type="image/png"
        ),
        "put_100k_again": lambda _: store.put(fixed, PAYLOAD, content_type="image/png"),
        "head": lambda _: store.head(fixed),
        "read_prefix_16": lambda _: store.read_prefix(fixed, 16),
        "presign": lambda _: store.presign_get("private/u/inputs/a.png", 300),
    }
    results: dict[str, dict[str, float]] = {}

    async def main() -> None:
        await store.put(fixed, PAYLOAD, content_type="image/png")
        for name, op in ops.items():
            results[name] = await _measure_async(op, n, runs)

    trio.run(main)
    return {"ops": results}


WORKERS = {"obstore": _obstore_worker, "boto3": _boto3_worker, "package": _package_worker}


def _run_worker(name: str, endpoint: str, n: int, runs: int) -> dict[str, object] | str:
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            *("--worker", name, "--endpoint", endpoint),
            *("--n", str(n), "--runs", str(runs)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return f"worker failed: {result.stderr.strip().splitlines()[-1:]}"
    figures: dict[str, object] = json.loads(result.stdout)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("--endpoint")
    args = parser.parse_args()
    if args.worker:
        baseline = _rss_mib()
        figures = WORKERS[args.worker](args.endpoint, args.n, args.runs)
        figures["rss_before_mib"] = baseline
        figures["peak_rss_mib"] = _peak_rss_mib()
        print(json.dumps(figures))
        return
    with s3server.running_moto() as server:
        s3server.make_bucket(server.endpoint, BUCKET)
        print(f"moto at {server.endpoint}; {args.runs} runs x {args.n} calls, medians")
        for name in ("obstore", "boto3", "package"):
            figures = _run_worker(name, server.endpoint, args.n, args.runs)
            print(f"\n{name}")
            if isinstance(figures, str):
                print(f"  {figures}")
                continue
            if "import_s" in figures:
                print(
                    f"  import + client  {figures['import_s'] * 1000:8.1f} ms   "
                    f"RSS after {figures['rss_after_import_mib']:6.1f} MiB"
                )
            ops = figures["ops"]
            assert isinstance(ops, dict)  # noqa: S101
            for op, value in ops.items():
                print(f"  {op:<16} wall {value['wall_us']:9.0f} us   cpu {value['cpu_us']:8.0f} us")
            print(
                f"  RSS before import {figures['rss_before_mib']:5.1f} MiB,"
                f" peak {figures['peak_rss_mib']:5.1f} MiB"
            )


if __name__ == "__main__":
    main()

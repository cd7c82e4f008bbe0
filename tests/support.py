"""Shared test helpers: a loopback image server that counts requests, catalogs, snakemake runs."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
# The cluster profiles run from the environment that holds the executor plugins (make cluster-env).
CLUSTER_SNAKEMAKE = str(REPO / ".venv-cluster" / "bin" / "snakemake")
CLUSTER_PROFILES = {"slurm", "cluster-generic"}
sys.path.insert(0, str(REPO / "workflow"))

from thumbfeat.plan import PLAN_JSON_VAR  # noqa: E402
from thumbfeat.thumbnail import thumbnail_settings  # noqa: E402

TAG = thumbnail_settings(yaml.safe_load((REPO / "config" / "config.yaml").read_text())
                         ["thumbnail"]).tag
"""The thumbnail settings folder of the default config, where a default run writes."""


def make_jpeg(name: str, size: tuple[int, int] = (320, 240)) -> bytes:
    """A distinct, deterministic photo-like JPEG for ``name`` (gradients plus noise)."""
    seed = zlib.crc32(name.encode())
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            (x / width) * rng.uniform(60, 255),
            (y / height) * rng.uniform(60, 255),
            ((x + y) / (width + height)) * rng.uniform(60, 255),
        ],
        axis=-1,
    )
    noise = rng.normal(0, 12, size=(height, width, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=85)
    return out.getvalue()


def quiet_handler(answer: Callable[[BaseHTTPRequestHandler], None],
                  methods: Sequence[str] = ("GET",)) -> type[BaseHTTPRequestHandler]:
    """The request handler of the tests' loopback servers: HTTP/1.1 (keep-alive, as real
    servers answer), no log line per request, and every request of ``methods`` handed to
    ``answer``."""

    def respond(handler: BaseHTTPRequestHandler) -> None:
        answer(handler)

    def log_message(handler: BaseHTTPRequestHandler, format: str, *args: object) -> None:
        return

    body: dict[str, object] = {"protocol_version": "HTTP/1.1", "log_message": log_message}
    body.update({f"do_{method}": respond for method in methods})
    return type("QuietHandler", (BaseHTTPRequestHandler,), body)


class LoopbackServer(ThreadingHTTPServer):
    """A threaded server whose listen backlog holds a whole pool of connections arriving at once
    (the default of 5 drops the rest, which then fail as connect timeouts and get retried)."""

    request_queue_size = 256


class ImageServer:
    """A loopback HTTP server with a behaviour per path prefix, counting every request.

    ``/img/<name>.jpg`` serves a real JPEG; ``/file/<name>`` the bytes put in ``files[name]``;
    ``/missing/`` answers 404, ``/gone/`` 410, ``/html/`` an HTML page labelled image/jpeg,
    ``/error/`` 500 forever, ``/flaky/<n>/`` 503 for the first n requests of that path and then
    the image, ``/ratelimit/`` 429 with Retry-After 1 once and then the image.
    """

    def __init__(self, delay: float = 0.0, port: int = 0) -> None:
        self.delay = delay
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.cache: dict[str, bytes] = {}
        # Bytes served as they are at /file/<name>, for tests that need particular images.
        self.files: dict[str, bytes] = {}
        self.httpd = LoopbackServer(("127.0.0.1", port), quiet_handler(self.handle))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> ImageServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def image(self, name: str) -> bytes:
        with self.lock:
            if name not in self.cache:
                self.cache[name] = make_jpeg(name)
            return self.cache[name]

    def total(self, prefix: str = "") -> int:
        with self.lock:
            return sum(n for path, n in self.counts.items() if path.startswith(prefix))

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.counts)

    def send(self, handler: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str,
             headers: dict[str, str] | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(body)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        with self.lock:
            self.counts[path] += 1
            seen = self.counts[path]
        if self.delay:
            time.sleep(self.delay)
        name = path.rsplit("/", 1)[-1].removesuffix(".jpg")
        parts = path.strip("/").split("/")
        kind = parts[0]
        if kind == "img":
            self.send(handler, 200, self.image(name), "image/jpeg")
        elif kind == "file" and parts[-1] in self.files:
            self.send(handler, 200, self.files[parts[-1]], "application/octet-stream")
        elif kind == "missing":
            self.send(handler, 404, b"not here", "text/plain")
        elif kind == "gone":
            self.send(handler, 410, b"gone", "text/plain")
        elif kind == "html":
            self.send(handler, 200, b"<!DOCTYPE html><html><body>login</body></html>",
                      "image/jpeg")
        elif kind == "error":
            self.send(handler, 500, b"broken", "text/plain")
        elif kind == "flaky":
            failures = int(parts[1])
            if seen <= failures:
                self.send(handler, 503, b"busy", "text/plain")
            else:
                self.send(handler, 200, self.image(name), "image/jpeg")
        elif kind == "ratelimit":
            if seen == 1:
                self.send(handler, 429, b"slow down", "text/plain", {"Retry-After": "1"})
            else:
                self.send(handler, 200, self.image(name), "image/jpeg")
        else:
            self.send(handler, 404, b"unknown", "text/plain")


def write_catalog(path: Path, rows: Iterable[Sequence[str]],
                  header: Sequence[str] = ("image_id", "url")) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def image_rows(server: ImageServer, names: Iterable[str]) -> list[tuple[str, str]]:
    return [(name, f"{server.base}/img/{name}.jpg") for name in names]


def snakemake_for(args: Sequence[str]) -> str:
    """The snakemake to run ``args`` with: the cluster environment's for a cluster profile."""
    cluster = any(Path(a).name in CLUSTER_PROFILES and Path(a).parent == REPO / "profiles"
                  for a in args) or "--executor" in args
    if not cluster:
        return SNAKEMAKE
    if not Path(CLUSTER_SNAKEMAKE).exists():
        raise AssertionError(f"{CLUSTER_SNAKEMAKE} is missing: run `make cluster-env` first")
    return CLUSTER_SNAKEMAKE


def snakemake_command(workdir: Path, *args: str, config: dict[str, str] | None = None,
                      cores: int = 2) -> list[str]:
    command = [snakemake_for(args), "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--cores", str(cores), *args]
    if config:
        command += ["--config", *(f"{k}={v}" for k, v in config.items())]
    return command


def run_snakemake(workdir: Path, *args: str, config: dict[str, str] | None = None,
                  cores: int = 2, check: bool = True, timeout: float = 600,
                  env: dict[str, str] | None = None,
                  preexec_fn: Callable[[], None] | None = None,
                  ) -> subprocess.CompletedProcess[str]:
    """Run the real workflow in ``workdir``; on failure show its output."""
    result = subprocess.run(snakemake_command(workdir, *args, config=config, cores=cores),
                            capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            preexec_fn=preexec_fn)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout}\n"
                             f"{result.stderr[-6000:]}")
    return result


def run_planned(workdir: Path, *args: str, **options: Any,
                ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run the workflow as run_snakemake does, with the plan it announced (its JSON document)."""
    with tempfile.TemporaryDirectory(prefix="plan-") as folder:
        path = Path(folder) / "plan.json"
        env = {**(options.pop("env", None) or {}), PLAN_JSON_VAR: str(path)}
        result = run_snakemake(workdir, *args, env=env, **options)
        assert path.exists(), f"no plan written:\n{result.stdout}\n{result.stderr[-6000:]}"
        return result, json.loads(path.read_text())


def plan_of(workdir: Path, *args: str, **options: Any) -> dict[str, Any]:
    """The plan document of a dry run with these options (nothing is fetched or written)."""
    return run_planned(workdir, "-n", *args, **options)[1]


def preview(document: dict[str, Any]) -> dict[str, object]:
    """The counts of a plan document most tests compare, and the table's fate."""
    table = document["table"]
    return {"catalog": document["catalog_images"], "fetch": document["fetch"]["images"],
            "measure": document["measure"]["images"], "kept": document["failures"]["kept"],
            "retry": document["failures"]["retried"], "batches": len(document["batches"]),
            "table": None if table is None else table["reason"] if table["rebuild"]
            else "up to date"}


# A stand-in for Snakemake: runs a job through a shell that outlives it, as Snakemake runs jobs
# (the trailing command keeps the shell from replacing itself with the job).
OWNER = """
import os, shlex, subprocess, sys
argv = [a.replace("{owner}", str(os.getpid())) for a in sys.argv[1:]]
subprocess.run(["sh", "-c", " ".join(shlex.quote(a) for a in argv) + "; true"])
"""


def start_owner(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` (``{owner}`` in it becomes the stand-in's pid) under a stand-in owner."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    return subprocess.Popen([sys.executable, "-c", OWNER, *argv], env=env,
                            start_new_session=True)


def file_times(root: Path, pattern: str) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.glob(pattern)}


DIM_IMAGE: list[tuple[object, ...]] = [
    # image_id (an integer in the database), url, vote_pool_flag
    (7, "http://h/7.jpg", True),
    (8, "http://h/8.jpg", False),
    (9, "file:images/9.jpg", True),
    (10, "http://h/10.jpg", None),
]


def sqlite_catalog(path: Path, rows: list[tuple[object, ...]] = DIM_IMAGE) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as con, con:
        con.execute("CREATE TABLE dim_image (image_id INTEGER, url TEXT, vote_pool_flag BOOLEAN)")
        con.executemany("INSERT INTO dim_image VALUES (?, ?, ?)", rows)
    return path


def duckdb_catalog(path: Path, rows: list[tuple[object, ...]] = DIM_IMAGE) -> Path:
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE dim_image (image_id INTEGER, url VARCHAR, "
                    "vote_pool_flag BOOLEAN)")
        con.executemany("INSERT INTO dim_image VALUES (?, ?, ?)", rows)
    return path

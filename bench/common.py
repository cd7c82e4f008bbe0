"""Pieces shared by the benchmarks: timing commands, serving images with nginx, reporting."""

from __future__ import annotations

import csv
import os
import platform
import shutil
import socket
import statistics
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _write_images(args: tuple[Path, list[str]]) -> None:
    from tests.support import make_jpeg

    folder, names = args
    for name in names:
        path = folder / f"{name}.jpg"
        if not path.exists():
            path.write_bytes(make_jpeg(name))


def generate_images(folder: Path, names: list[str], cores: int) -> None:
    """Distinct 320x240 JPEGs named ``<name>.jpg`` (kept between runs: only missing ones made)."""
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [(folder, names[i : i + 1000]) for i in range(0, len(names), 1000)]
    with ProcessPoolExecutor(max_workers=cores) as pool:
        list(pool.map(_write_images, chunks))


def write_catalog(path: Path, names: list[str], base: str) -> None:
    """A CSV catalog of the images served under ``base``."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "url"])
        writer.writerows((n, f"{base}/{n}.jpg") for n in names)


@dataclass
class Measured:
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float = 0.0
    """User and system CPU of the command and every process it waited for."""


def measure(command: list[str], cwd: Path, *, check: bool = True) -> Measured:
    """Run ``command``; wall time and the peak RSS of the largest process in its tree.

    The command is started through GNU time (Debian package ``time``) when it is there: a child
    forked from this process counts this process's pages as its own until it execs, so a
    benchmark that has grown large would otherwise report its own size.
    """
    log = cwd / "bench-command.log"
    peak_file = cwd / "bench-peak-rss.txt"
    gnu_time = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time")
                                        else None)
    wrapped = [gnu_time, "-f", "%M", "-o", str(peak_file), *command] if gnu_time else command
    with open(log, "w") as output:
        started = time.perf_counter()
        process = subprocess.Popen(wrapped, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    if check and os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{log.read_text()[-3000:]}")
    peak_kb = int(peak_file.read_text().split()[-1]) if gnu_time else usage.ru_maxrss
    return Measured(seconds, peak_kb / 1024, usage.ru_utime + usage.ru_stime)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_nginx(root: Path, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Serve ``root`` on a free loopback port; returns the process and its base URL."""
    port = free_port()
    (work / "nginx").mkdir(parents=True, exist_ok=True)
    conf = work / "nginx" / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
error_log {work}/nginx/error.log warn;
pid {work}/nginx/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 100000;
    types {{ image/jpeg jpg; }}
    client_body_temp_path {work}/nginx/body;
    proxy_temp_path {work}/nginx/proxy;
    fastcgi_temp_path {work}/nginx/fastcgi;
    uwsgi_temp_path {work}/nginx/uwsgi;
    scgi_temp_path {work}/nginx/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
""")
    process = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(work / "nginx")])
    return serving(process, port, "nginx")


def serving(process: subprocess.Popen[bytes], port: int, name: str,
            tries: int = 200) -> tuple[subprocess.Popen[bytes], str]:
    """Wait until ``process`` accepts connections on ``port``; its base URL, or it is killed."""
    for _ in range(tries):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{name} did not start")


def nginx_version() -> str:
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
    return out.strip().rsplit("/", 1)[-1]


def summary(values: list[float], digits: int = 2) -> str:
    """Median with the min-max spread."""
    return (f"{statistics.median(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({cpu}), {memory_gb:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


def publish(report: Path, lines: list[str]) -> None:
    """Print a benchmark's section and store it in BENCHMARKS.md (see update_report)."""
    section = "\n".join(lines)
    print(section)
    update_report(report, section)


def update_report(report: Path, section: str) -> None:
    """Replace this benchmark's section in BENCHMARKS.md (by its heading), keeping the others."""
    title = section.splitlines()[0].split(":")[0]
    text = report.read_text() if report.exists() else "# Benchmarks\n\n"
    kept: list[str] = []
    skipping = False
    for line in text.splitlines():
        if line.startswith("## "):
            skipping = line.startswith(title)
        if not skipping:
            kept.append(line)
    report.write_text("\n".join(kept).rstrip() + "\n\n" + section)


DEMO_PHOTOS = ("astronaut", "coffee", "chelsea_cat", "rocket", "hubble", "retina", "china",
               "flower")
"""Colour photos of the demo catalog: the seeds of the large benchmark photos."""


def camera_photo(source: Path, size: tuple[int, int], seed: int, quality: int = 90) -> bytes:
    """A large JPEG made from a small real photo: a crop upscaled to ``size``, with sensor grain.

    The grain (uniform in -8..8, per pixel and channel) makes it compress like a camera file
    (about 2-3 MB at 12 MP) instead of like a smooth upscale; the seed picks the crop, a mirror
    and the grain, so every photo is distinct.
    """
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    with Image.open(source) as image:
        picture = image.convert("RGB")
    width, height = size
    # The largest crop of the photo with the target's ratio, shifted and trimmed at random.
    scale = min(picture.width / width, picture.height / height) * rng.uniform(0.8, 1.0)
    crop_w, crop_h = max(8, int(width * scale)), max(8, int(height * scale))
    left = int(rng.integers(0, picture.width - crop_w + 1))
    top = int(rng.integers(0, picture.height - crop_h + 1))
    picture = picture.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    big = np.asarray(picture.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.integers(-8, 9, size=big.shape, dtype=np.int8)
    pixels = np.clip(big + grain, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=quality)
    return out.getvalue()


def _write_photos(args: tuple[Path, list[str], tuple[int, int]]) -> None:
    folder, names, size = args
    for name in names:
        path = folder / f"{name}.jpg"
        if not path.exists():
            seed = int(name.lstrip("p"))
            source = ROOT / "config" / "demo" / "images" / f"{DEMO_PHOTOS[seed % 8]}.jpg"
            path.write_bytes(camera_photo(source, size, seed))


def generate_photos(folder: Path, names: list[str], cores: int,
                    size: tuple[int, int] = (4000, 3000)) -> None:
    """Camera-like JPEGs ``p<number>.jpg`` made from the demo's photos (kept between runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [(folder, names[i::cores], size) for i in range(cores)]
    with ProcessPoolExecutor(max_workers=cores) as pool:
        list(pool.map(_write_photos, chunks))

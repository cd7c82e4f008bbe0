"""End-to-end runs against hostile servers and bad sources: every image ends with a clear outcome.

Each test runs the real workflow with real snakemake against the fault-injecting loopback server of
tests/faults.py, and asserts what the server saw (request counts, arrival times, headers) as well
as what the run wrote.
"""

from __future__ import annotations

import io
import json
import math
import resource
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from thumbfeat import layout

from tests.faults import FaultServer, max_in_window, one_bit_png, png_chunk, refused_port
from tests.support import make_jpeg, plan_of, run_snakemake, write_catalog

# Short deadlines keep the matrix quick; the bound on the run's wall time is derived from them.
CONNECT, READ, TOTAL, ATTEMPTS, BACKOFF_MAX, RETRY_AFTER_MAX = 1, 1, 3, 3, 0.2, 2
HOSTILE = f"""\
batch_size: 100
download:
  concurrency: 32
  connect_timeout: {CONNECT}
  read_timeout: {READ}
  total_timeout: {TOTAL}
  max_attempts: {ATTEMPTS}
  backoff_base: 0.05
  backoff_max: {BACKOFF_MAX}
  retry_after_max: {RETRY_AFTER_MAX}
  max_redirects: 5
  max_bytes: 5242880
"""


def table_of(workdir: Path) -> dict[str, dict[str, object]]:
    rows = pq.read_table(workdir / "results" / "feature_table.parquet").to_pylist()
    return {str(r["image_id"]): r for r in rows}


def configfile(tmp_path: Path, text: str, name: str = "hostile.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# (id, path on the fault server or a full URL, status, error kind, retryable, requests of path)
MATRIX: list[tuple[str, str, str, str | None, bool | None, int | None]] = [
    ("fine", "/ok/fine", "ok", None, None, 1),
    ("not_found", "/status/404/a", "failed", "http_status", False, 1),
    ("gone", "/status/410/a", "failed", "http_status", False, 1),
    ("broken_server", "/status/500/a", "failed", "http_status", True, ATTEMPTS),
    ("request_timeout", "/status/408/a", "failed", "http_status", True, ATTEMPTS),
    ("forbidden", "/status/403/a", "failed", "http_status", False, 1),
    ("busy_twice", "/flaky/2/busy", "ok", None, None, 3),
    ("rate_limited", "/slowdown/1/limited", "ok", None, None, 2),
    ("html_page", "/html/a", "failed", "not_image", False, 1),
    ("empty_body", "/empty/a", "failed", "not_image", False, 1),
    ("short_body", "/short/short", "failed", "connection", True, ATTEMPTS),
    ("cut_jpeg", "/cut/a", "failed", "truncated", False, 1),
    ("drip_body", "/drip/drip", "failed", "timeout", True, ATTEMPTS),
    ("drip_headers", "/headerdrip/a", "failed", "timeout", True, ATTEMPTS),
    ("silent", "/hang/a", "failed", "timeout", True, ATTEMPTS),
    ("huge_200mb", "/huge/a", "failed", "too_large", False, 1),
    ("endless", "/endless/a", "failed", "too_large", False, 1),
    ("png_bomb", "/bomb/a", "failed", "decompression_bomb", False, 1),
    ("redirect_loop", "/loop/a/a", "failed", "redirect", False, None),
    ("redirect_to_file", "/tofile/a", "failed", "redirect", False, 1),
    ("wrong_type", "/wrongtype/wrong", "ok", None, None, 1),
    ("one_redirect", "/redirect/moved", "ok", None, None, 1),
    ("file_denied", "file:///etc/hostname", "failed", "bad_url", False, None),
    ("file_allowed", "LOCAL", "ok", None, None, None),
    ("ipv6_broken", "http://[::1/a.jpg", "failed", "bad_url", False, None),
    ("script", "javascript:alert(1)", "failed", "bad_url", False, None),
    ("no_scheme", "www.example.org/a.jpg", "failed", "bad_url", False, None),
    ("bad_port", "http://127.0.0.1:99999/a.jpg", "failed", "bad_url", False, None),
    ("refused", "REFUSED", "failed", "connection", True, None),
]


def test_every_fault_in_one_run(tmp_path: Path, faults: FaultServer) -> None:
    local = tmp_path / "local"
    local.mkdir()
    (local / "photo.jpg").write_bytes(make_jpeg("local"))
    port = refused_port()
    rows = []
    for image_id, source, *_ in MATRIX:
        if source == "LOCAL":
            url = (local / "photo.jpg").as_uri()
        elif source == "REFUSED":
            url = f"http://127.0.0.1:{port}/a.jpg"
        elif source.startswith("/"):
            url = faults.url(source)
        else:
            url = source
        rows.append((image_id, url))
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    config = configfile(tmp_path, HOSTILE + f"local_file_roots: [{local}]\n")

    started = time.monotonic()
    result = run_snakemake(tmp_path, "--configfile", config, config={"catalog": str(catalog)})
    elapsed = time.monotonic() - started
    # URLs that cannot be fetched at all are announced before the downloads, naming the image.
    output = result.stdout + result.stderr
    for image_id in ("script", "no_scheme", "ipv6_broken", "bad_port"):
        assert f"image {image_id!r}" in output and "recorded as failed (bad_url)" in output

    # A slow or hanging source never holds the run: every attempt is bounded by the deadline,
    # and all sources are fetched at once. Generous on purpose: a correctness bound, not a
    # benchmark (snakemake's own start-up is inside the 60 s).
    per_image = ATTEMPTS * (max(TOTAL, CONNECT + READ) + BACKOFF_MAX + RETRY_AFTER_MAX)
    assert elapsed < per_image + 60, elapsed

    # Nothing is written outside results/ (and Snakemake's own .snakemake/).
    assert {p.name for p in tmp_path.iterdir()} == {"catalog.csv", "hostile.yaml", "local",
                                                    "results", ".snakemake"}
    assert [p.name for p in local.iterdir()] == ["photo.jpg"]

    table = table_of(tmp_path)
    assert set(table) == {row[0] for row in MATRIX}
    counts = faults.counts()
    for image_id, source, status, kind, retryable, requests in MATRIX:
        row = table[image_id]
        assert row["status"] == status, (image_id, row)
        assert row["error_kind"] == kind, (image_id, row)
        if status == "failed":
            assert row["retryable"] is retryable, (image_id, row)
            assert row["error"], image_id
            record = json.loads(Path(layout.failure_path(tmp_path / "results",
                                                         image_id)).read_text())
            assert (record["kind"], record["retryable"]) == (kind, retryable)
        else:
            assert row["width"] and row["height"] and row["brightness_mean"] is not None
        if requests is not None:
            assert counts[source] == requests, (image_id, counts[source])

    # Permanent errors were asked once, transient ones at most max_attempts times.
    assert counts["/loop/a/a"] + counts["/loop/b/a"] == 5 + 1  # one attempt: 5 redirects
    assert table["wrong_type"]["format"] == "PNG"  # Content-Type was a hint, the bytes decided
    assert "404" in str(table["not_found"]["error"])
    assert "5242880" in str(table["huge_200mb"]["error"])
    assert "deadline of 3 s" in str(table["drip_body"]["error"])
    assert "local_file_roots" in str(table["file_denied"]["error"])
    assert max(counts.values()) <= ATTEMPTS

    manifests = list((tmp_path / "results" / "batches").glob("*.json"))
    summary = json.loads(manifests[0].read_text())["download"]
    assert summary["failed_by_kind"]["timeout"] == 3
    assert summary["ok"] == sum(1 for m in MATRIX if m[2] == "ok")

    # The next run asks again only for the transient failures.
    plan = plan_of(tmp_path, "--configfile", config, config={"catalog": str(catalog)})
    transient = sum(1 for m in MATRIX if m[4] is True)
    permanent = sum(1 for m in MATRIX if m[4] is False)
    assert plan["fetch"]["images"] == transient
    assert plan["failures"]["kept"] == permanent


JITTER = 0.25


@pytest.mark.parametrize("cores", [1, 2, 4, 8])
def test_host_rate_limit_holds_across_parallel_jobs(tmp_path: Path, faults: FaultServer,
                                                     cores: int) -> None:
    limit = 20
    images = 120
    rows = [(f"r{i:03d}", faults.url(f"/ok/r{i:03d}")) for i in range(images)]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    config = configfile(tmp_path, f"download: {{host_rate_limit: {limit}, concurrency: 16}}\n"
                                  "local_file_roots: []\n")
    # Batches of 15: at least as many batch jobs as cores, so every core runs one at a time.
    run_snakemake(tmp_path, "--configfile", config, cores=cores,
                  config={"catalog": str(catalog), "batch_size": "15"})
    assert {r["status"] for r in table_of(tmp_path).values()} == {"ok"}
    times = faults.times("/ok/")
    assert len(times) == images
    # Pacing lets each job send at most (its share of the limit) + 1 requests in a one-second
    # window, so all jobs together at most limit + cores. On a loaded machine a request can
    # reach the server up to JITTER seconds after its turn while the next one is on time, which
    # squeezes up to JITTER x limit more arrivals into a window.
    assert max_in_window(times) <= limit + cores + math.ceil(JITTER * limit), max_in_window(times)
    # Over the whole run jitter averages out, but not job starts: each job's pacing begins ready,
    # so every batch job may send its first request at once. Over a span of T seconds the jobs
    # together send at most limit x T plus one per batch job (5% more for a loaded machine's
    # clocks).
    span = times[-1] - times[0]
    batch_jobs = math.ceil(images / 15)
    assert len(times) <= limit * span * 1.05 + batch_jobs, (len(times), span)


def test_server_answering_429_above_a_rate(tmp_path: Path, faults: FaultServer) -> None:
    allowed = 10
    images = 120
    rows = [(f"l{i:03d}", faults.url(f"/limited/{allowed}/l{i:03d}")) for i in range(images)]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    # No limit configured: the jobs have to find the host's limit themselves.
    config = configfile(tmp_path, "download: {concurrency: 16, max_attempts: 6}\n"
                                  "local_file_roots: []\n")
    run_snakemake(tmp_path, "--configfile", config, cores=2,
                  config={"catalog": str(catalog), "batch_size": "60"})
    table = table_of(tmp_path)
    assert {r["status"] for r in table.values()} == {"ok"}
    counts = faults.counts()
    rejected = sum(counts.values()) - images
    # Each job's first wave of 16 requests meets the limit (at most 2 x 16 rejected), after
    # which the jobs pace themselves at half the rate they saw and creep back up; a few 429s
    # at each creep are the price of finding the limit.
    assert rejected <= 2 * 16 + images // 4, rejected
    assert max(counts.values()) <= 6


def test_secrets_stay_out_of_every_output(tmp_path: Path, faults: FaultServer) -> None:
    secret = "sk-live-7f3a9c0de1b2"
    query_token = "qt-55aa77bb"
    faults.api_key = secret
    rows = [
        ("allowed", faults.url("/secret/allowed")),
        ("elsewhere", faults.url("/away/localhost/secret/elsewhere")),
        ("missing", faults.url(f"/status/404/missing?token={query_token}")),
        ("broken", f"http://[::1/a.jpg?token={query_token}"),
        ("to_file", faults.url(f"/tofile/x?token={query_token}")),
        ("script", f"javascript:alert('{query_token}')"),
    ]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    config = configfile(tmp_path, "download: {header_env: {X-Api-Key: TF_TEST_API_KEY}, "
                                  "max_attempts: 1, user_agent: thumbfeat-test/1}\n"
                                  "local_file_roots: []\n")

    missing = run_snakemake(tmp_path, "--configfile", config, check=False,
                            config={"catalog": str(catalog)})
    assert missing.returncode != 0
    assert "TF_TEST_API_KEY" in missing.stdout + missing.stderr
    assert not (tmp_path / "results").exists()

    result = run_snakemake(tmp_path, "--configfile", config, config={"catalog": str(catalog)},
                           env={"TF_TEST_API_KEY": secret})
    table = table_of(tmp_path)
    assert table["allowed"]["status"] == "ok"
    # The secret is not handed to another host on a redirect.
    assert "401" in str(table["elsewhere"]["error"])
    seen = faults.seen_headers("/secret/")
    assert [h.get("X-Api-Key") for h in seen] == [secret, None] or \
        [h.get("X-Api-Key") for h in seen] == [None, secret]
    assert {h["User-Agent"] for h in faults.seen_headers()} == {"thumbfeat-test/1"}

    texts = {"stdout": result.stdout + result.stderr}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            texts[str(path.relative_to(tmp_path))] = path.read_bytes().decode("latin-1")
    for name, text in texts.items():
        assert secret not in text, name
    # Query tokens of the catalog's URLs stay in the catalog (and its snapshot), nowhere else.
    for name, text in texts.items():
        if name == "catalog.csv" or name.startswith("results/catalog/"):
            continue
        assert query_token not in text, name


def _limit_file_size(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _fingerprint(results: Path) -> dict[str, bytes]:
    return {str(p.relative_to(results)): p.read_bytes() for p in results.rglob("*")
            if p.is_file() and "logs" not in p.parts}


def test_a_full_disk_stops_the_run_loudly_and_keeps_finished_files(
        tmp_path: Path, faults: FaultServer) -> None:
    names = [f"d{i:02d}" for i in range(30)]
    for name in names[20:]:
        # Bigger than the file size limit below, so writing them fails like a full disk.
        faults.files[f"/big/{name}"] = (make_jpeg(name, (900, 700)), "image/jpeg")
    rows = [(n, faults.url(f"/ok/{n}")) for n in names[:20]]
    rows += [(n, faults.url(f"/big/{n}")) for n in names[20:]]
    write_catalog(tmp_path / "catalog.csv", rows[:20])
    # Originals are kept, so the big images are written at their size.
    config = {"catalog": str(tmp_path / "catalog.csv"), "local_file_roots": "[]",
              "batch_size": "100", "thumbnail": "{max_side: null}"}
    run_snakemake(tmp_path, config=config)
    results = tmp_path / "results"
    before = _fingerprint(results)

    write_catalog(tmp_path / "catalog.csv", rows)
    limit = 64 * 1024
    assert all(len(body) > limit for body, _ in faults.files.values())
    failed = run_snakemake(tmp_path, config=config, check=False,
                           preexec_fn=lambda: _limit_file_size(limit))
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "cannot write the results" in output
    assert "File too large" in output
    assert "results/thumbs/" in output  # the file that could not be written
    after = _fingerprint(results)
    # Nothing finished was changed or deleted; the disk error is no image's failure.
    assert {k: v for k, v in after.items() if k in before} == before
    assert not any(p.name.startswith(".") for p in results.rglob("*"))
    assert not list((results / "failed").rglob("*.json")) if (results / "failed").exists() \
        else True

    run_snakemake(tmp_path, config=config)
    table = table_of(tmp_path)
    assert len(table) == 30
    assert {r["status"] for r in table.values()} == {"ok"}


def test_an_unwritable_folder_stops_the_run_loudly(tmp_path: Path, faults: FaultServer) -> None:
    names = [f"w{i:02d}" for i in range(12)]
    rows = [(n, faults.url(f"/ok/{n}")) for n in names[:6]]
    rows += [(n, faults.url(f"/status/404/{n}")) for n in names[6:]]
    write_catalog(tmp_path / "catalog.csv", rows[:6])
    # Originals are kept, so the big images are written at their size.
    config = {"catalog": str(tmp_path / "catalog.csv"), "local_file_roots": "[]",
              "batch_size": "100", "thumbnail": "{max_side: null}"}
    run_snakemake(tmp_path, config=config)
    results = tmp_path / "results"
    before = _fingerprint(results)
    # A file where the folder of a new failure record must go: as unwritable as a folder gets
    # for root (who ignores permission bits).
    blocked = Path(layout.failure_path(results, names[8])).parent
    assert not blocked.exists()
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_bytes(b"")
    write_catalog(tmp_path / "catalog.csv", rows)
    failed = run_snakemake(tmp_path, config=config, check=False)
    assert failed.returncode != 0
    assert "cannot write the results" in failed.stdout + failed.stderr
    assert str(Path("failed") / blocked.name) in failed.stdout + failed.stderr
    after = _fingerprint(results)
    assert {k: v for k, v in after.items() if k in before} == before

    blocked.unlink()
    run_snakemake(tmp_path, config=config)
    table = table_of(tmp_path)
    assert [table[n]["status"] for n in names] == ["ok"] * 6 + ["failed"] * 6


# --- real-world odd images ------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    bands = len(mode) if mode in {"RGB", "RGBA", "CMYK", "LA"} else 1
    shape = (height, width, bands) if bands > 1 else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def rgb16_png(width: int, height: int) -> bytes:
    """A 48-bit RGB PNG (Pillow cannot write one)."""
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    rng = np.random.default_rng(3)
    rows = b"".join(b"\x00" + rng.integers(0, 65536, width * 3).astype(">u2").tobytes()
                    for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


def frames(count: int, size: tuple[int, int]) -> list[Image.Image]:
    return [Image.new("RGB", size, (40 * i, 200 - 40 * i, 90)) for i in range(count)]


def odd_images() -> dict[str, tuple[bytes, tuple[object, ...]]]:
    """Bytes of each odd image, and what its row must say: ("ok", (w, h), format) or
    ("failed", kind, words of the reason)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    palette = Image.new("P", (48, 32), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    palette.paste(1, (0, 0, 24, 32))
    first, *rest = frames(3, (40, 30))
    gif = io.BytesIO()
    first.save(gif, "GIF", save_all=True, append_images=rest, duration=80, loop=0)
    webp = io.BytesIO()
    first.save(webp, "WEBP", save_all=True, append_images=rest, duration=80, loop=0)
    gray16 = Image.fromarray((np.arange(50 * 40, dtype=np.uint16) * 30).reshape(40, 50))
    return {
        "cmyk_jpeg": (encode(noise(64, 48, "CMYK"), "JPEG"), ("ok", (64, 48), "JPEG")),
        "progressive_jpeg": (encode(noise(200, 150), "JPEG", progressive=True, optimize=True),
                             ("ok", (200, 150), "JPEG")),
        "grayscale_jpeg": (encode(noise(80, 60, "L"), "JPEG"), ("ok", (80, 60), "JPEG")),
        "exif_rotated": (encode(noise(60, 20), "JPEG", exif=exif.tobytes()),
                         ("ok", (20, 60), "JPEG")),
        "png_16bit_gray": (encode(gray16, "PNG"), ("ok", (50, 40), "PNG")),
        "png_16bit_rgb": (rgb16_png(30, 20), ("ok", (30, 20), "PNG")),
        "palette_transparent": (encode(palette, "PNG", transparency=0), ("ok", (48, 32), "PNG")),
        "rgba_png": (encode(noise(32, 32, "RGBA"), "PNG"), ("ok", (32, 32), "PNG")),
        "one_bit_png": (encode(noise(33, 17, "L").convert("1"), "PNG"), ("ok", (33, 17), "PNG")),
        "animated_gif": (gif.getvalue(), ("ok", (40, 30), "GIF")),
        "animated_webp": (webp.getvalue(), ("ok", (40, 30), "WEBP")),
        "avif": (encode(noise(64, 40), "AVIF"), ("ok", (64, 40), "AVIF")),
        "tiff_float": (encode(Image.fromarray(np.linspace(0, 1, 600, dtype=np.float32)
                                              .reshape(20, 30)), "TIFF"),
                       ("ok", (30, 20), "TIFF")),
        "bmp": (encode(noise(21, 13), "BMP"), ("ok", (21, 13), "BMP")),
        "one_pixel": (encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"),
                      ("ok", (1, 1), "PNG")),
        "tall_1x4000": (encode(noise(1, 4000), "PNG"), ("ok", (1, 4000), "PNG")),
        "wide_4000x1": (encode(noise(4000, 1), "PNG"), ("ok", (4000, 1), "PNG")),
        "large_12mp": (one_bit_png(4000, 3000), ("ok", (4000, 3000), "PNG")),
        "over_max_pixels": (one_bit_png(5000, 5000),
                            ("failed", "decompression_bomb", "25000000 pixels")),
        "huge_dimensions": (one_bit_png(20000, 20000), ("failed", "decompression_bomb", "pixels")),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
                ("failed", "not_image", "not an image")),
        "ppm": (encode(noise(8, 8), "PPM"), ("failed", "not_image", "accepted format")),
    }


def test_odd_real_world_images(tmp_path: Path) -> None:
    images = odd_images()
    files = {f"/files/{name}": (data, "application/octet-stream")
             for name, (data, _) in images.items()}
    with FaultServer(files) as server:
        catalog = write_catalog(tmp_path / "catalog.csv",
                                [(name, server.url(f"/files/{name}")) for name in images])
        config = configfile(tmp_path, "max_pixels: 20000000\nlocal_file_roots: []\n")
        run_snakemake(tmp_path, "--configfile", config, config={"catalog": str(catalog)})
    table = table_of(tmp_path)
    for name, (data, expected) in images.items():
        row = table[name]
        if expected[0] == "ok":
            assert row["status"] == "ok", (name, row)
            # The download as served; the thumbnail within the default 512 px.
            assert (row["source_width"], row["source_height"]) == expected[1], name
            assert row["source_format"] == expected[2], name
            assert row["source_bytes"] == len(data)
            assert max(row["width"], row["height"]) <= 512, name
            for feature in ("brightness_mean", "contrast_rms"):
                assert 0.0 <= float(row[feature]) <= 1.0, (name, feature, row[feature])
            assert 0.0 <= float(row["entropy"]) <= 8.0, name
            assert math.isfinite(float(row["sharpness"])) and float(row["sharpness"]) >= 0, name
        else:
            assert row["status"] == "failed", (name, row)
            assert row["error_kind"] == expected[1], (name, row)
            assert expected[2] in str(row["error"]), (name, row["error"])
            assert row["retryable"] is False
    # Sensible values, not only valid ones: a flat image has no contrast or entropy, the red/
    # green palette image composites its transparent half on white, noise is sharp.
    assert table["one_pixel"]["contrast_rms"] == 0.0 and table["one_pixel"]["entropy"] == 0.0
    assert table["one_pixel"]["sharpness"] == 0.0
    assert table["palette_transparent"]["brightness_mean"] > 0.8
    assert table["large_12mp"]["brightness_mean"] == 0.0
    assert table["progressive_jpeg"]["sharpness"] > table["animated_gif"]["sharpness"]

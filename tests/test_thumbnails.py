"""Thumbnails made by real runs against the loopback server: size, orientation, transparency,
odd modes, bytes kept as served, settings changes, one decode per image and kill -9."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from thumbfeat import layout
from thumbfeat.batch import images_held
from thumbfeat.imaging import ImageRejected, decode_image
from thumbfeat.thumbnail import ThumbnailSettings

from tests.support import (
    REPO,
    ImageServer,
    make_jpeg,
    plan_of,
    run_snakemake,
    snakemake_command,
    write_catalog,
)

DECODE_LOG_DIR = Path(__file__).resolve().parent / "decodelog"


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def settings_file(tmp_path: Path, download: dict[str, object] | None = None,
                  **thumbnail: object) -> Path:
    path = tmp_path / "settings.yaml"
    # The loopback server is one Python process on a busy machine: fewer connections than the
    # default keep its answers within the timeouts.
    path.write_text(yaml.safe_dump({"thumbnail": thumbnail, "local_file_roots": [],
                                    "download": download or {"concurrency": 8}}))
    return path


def tag_of(**thumbnail: object) -> str:
    defaults = {"max_side": 512, "format": "jpeg", "quality": 85, "only_if_larger": True}
    return ThumbnailSettings(**{**defaults, **thumbnail}).tag  # type: ignore[arg-type]


def serve(server: ImageServer, tmp_path: Path, files: dict[str, bytes]) -> Path:
    """Put ``files`` on the server and write a catalog of them."""
    server.files.update(files)
    return write_catalog(tmp_path / "catalog.csv",
                         [(name, f"{server.base}/file/{name}") for name in files])


def run(tmp_path: Path, catalog: Path, settings: Path, *args: str,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_snakemake(tmp_path, "--configfile", str(settings), *args,
                         config={"catalog": str(catalog)}, env=env)


def thumb(tmp_path: Path, image_id: str, tag: str) -> bytes:
    return Path(layout.thumb_path(tmp_path / "results", image_id, tag)).read_bytes()


def table_rows(tmp_path: Path) -> dict[str, dict[str, object]]:
    rows = pq.read_table(tmp_path / "results" / "feature_table.parquet").to_pylist()
    return {str(row["image_id"]): row for row in rows}


def decodes(log: Path) -> list[tuple[str, tuple[int, int], int]]:
    """(format, decoded size, bytes decoded) of every pixel decode logged."""
    found = []
    for line in log.read_text().splitlines():
        _, fmt, size, length = line.split()
        width, height = size.split("x")
        found.append((fmt, (int(width), int(height)), int(length)))
    return found


def test_large_photo_is_decoded_once_at_reduced_size(server: ImageServer,
                                                     tmp_path: Path) -> None:
    big = make_jpeg("big", (4000, 3000))
    small = {f"s{i}": make_jpeg(f"s{i}") for i in range(4)}
    catalog = serve(server, tmp_path, {"big": big, **small})
    settings = settings_file(tmp_path, max_side=512)
    log = tmp_path / "decodes.log"
    run(tmp_path, catalog, settings, env={"PYTHONPATH": str(DECODE_LOG_DIR),
                                          "THUMBFEAT_TEST_DECODE_LOG": str(log)})
    tag = tag_of(max_side=512)
    stored = thumb(tmp_path, "big", tag)
    seen = decodes(log)
    # The photo: once, straight from the DCT at a quarter of its size, never at 4000x3000.
    assert [size for fmt, size, length in seen if length == len(big)] == [(1000, 750)]
    # Its thumbnail: once, to measure exactly the stored pixels.
    assert [size for fmt, size, length in seen if length == len(stored)] == [(512, 384)]
    # The small images: once each, kept as served.
    for name, data in small.items():
        assert [length for _, _, length in seen].count(len(data)) == 1, name
        assert thumb(tmp_path, name, tag) == data
    assert len(seen) == len(small) + 2
    with Image.open(io.BytesIO(stored)) as image:
        assert (image.format, image.size) == ("JPEG", (512, 384))
    rows = table_rows(tmp_path)
    row = rows["big"]
    assert (row["width"], row["height"], row["file_bytes"]) == (512, 384, len(stored))
    assert (row["source_width"], row["source_height"], row["source_bytes"]) == (4000, 3000,
                                                                               len(big))
    assert row["source_format"] == "JPEG"
    assert all(r["thumbnail_settings"] == tag for r in rows.values())


def test_measuring_the_stored_thumbnail_again_gives_the_same_row(server: ImageServer,
                                                                 tmp_path: Path) -> None:
    catalog = serve(server, tmp_path, {"big": make_jpeg("big", (2000, 1500)),
                                       "small": make_jpeg("small")})
    settings = settings_file(tmp_path, max_side=256, format="webp")
    run(tmp_path, catalog, settings)
    first = table_rows(tmp_path)
    requests = server.total()
    tag = tag_of(max_side=256, format="webp")
    # A different set each time (a batch with the same work is already recorded as done).
    for attempt, names in enumerate((["big"], ["small"], ["big", "small"])):
        for name in names:
            Path(layout.feature_path(tmp_path / "results", name, tag)).unlink()
        run(tmp_path, catalog, settings)
        assert server.total() == requests, attempt
        assert table_rows(tmp_path) == first, attempt


def test_exif_rotated_photo_stands_upright(server: ImageServer, tmp_path: Path) -> None:
    # Stored landscape, left half red and right half blue; orientation 6 turns it a quarter
    # clockwise for display, so upright it is portrait, red on top.
    pixels = np.zeros((400, 600, 3), dtype=np.uint8)
    pixels[:, :300] = (220, 20, 20)
    pixels[:, 300:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    catalog = serve(server, tmp_path, {"turned": encode(Image.fromarray(pixels), "JPEG",
                                                        exif=exif.tobytes())})
    run(tmp_path, catalog, settings_file(tmp_path, max_side=256))
    with Image.open(io.BytesIO(thumb(tmp_path, "turned", tag_of(max_side=256)))) as image:
        assert image.size == (171, 256)
        assert image.getexif().get(0x0112) is None
        top = image.convert("RGB").getpixel((85, 20))
        bottom = image.convert("RGB").getpixel((85, 235))
    assert top[0] > 180 and top[2] < 80
    assert bottom[2] > 180 and bottom[0] < 80
    row = table_rows(tmp_path)["turned"]
    assert (row["source_width"], row["source_height"]) == (400, 600)


def transparent_png() -> bytes:
    """Opaque green on the left half, fully transparent (red underneath) on the right."""
    pixels = np.zeros((300, 600, 4), dtype=np.uint8)
    pixels[:, :300] = (0, 200, 0, 255)
    pixels[:, 300:] = (255, 0, 0, 0)
    return encode(Image.fromarray(pixels, "RGBA"), "PNG")


def test_alpha_is_kept_in_webp_and_composited_on_white_in_jpeg(server: ImageServer,
                                                               tmp_path: Path) -> None:
    catalog = serve(server, tmp_path, {"alpha": transparent_png()})
    run(tmp_path, catalog, settings_file(tmp_path, max_side=200, format="webp"))
    with Image.open(io.BytesIO(thumb(tmp_path, "alpha", tag_of(max_side=200,
                                                               format="webp")))) as image:
        assert (image.format, image.mode, image.size) == ("WEBP", "RGBA", (200, 100))
        assert image.getpixel((20, 50))[3] == 255
        assert image.getpixel((180, 50))[3] == 0
    run(tmp_path, catalog, settings_file(tmp_path, max_side=200, format="jpeg"))
    with Image.open(io.BytesIO(thumb(tmp_path, "alpha", tag_of(max_side=200)))) as image:
        assert (image.format, image.mode) == ("JPEG", "RGB")
        assert all(v > 240 for v in image.getpixel((180, 50)))
        green = image.getpixel((20, 50))
        assert green[1] > 150 and green[0] < 60


def odd_images() -> dict[str, bytes]:
    frames = [Image.new("RGB", (600, 400), colour)
              for colour in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100)
    ramp = (np.arange(500 * 800, dtype=np.uint32).reshape(500, 800) * 13 % 65536)
    return {
        "anim": gif.getvalue(),
        "cmyk": encode(Image.new("CMYK", (900, 600), (0, 200, 200, 0)), "JPEG"),
        "deep": encode(Image.fromarray(ramp.astype(np.uint16)), "PNG"),
        "strip": encode(Image.new("RGB", (1, 4000), (10, 120, 200)), "PNG"),
    }


def test_animations_cmyk_16_bit_and_strips_give_sensible_thumbnails(server: ImageServer,
                                                                    tmp_path: Path) -> None:
    served = odd_images()
    with Image.open(io.BytesIO(served["anim"])) as image:
        assert image.n_frames == 3
    with Image.open(io.BytesIO(served["deep"])) as image:
        assert image.mode.startswith("I")
    catalog = serve(server, tmp_path, served)
    run(tmp_path, catalog, settings_file(tmp_path, max_side=256))
    tag = tag_of(max_side=256)
    expected = {"anim": (256, 171), "cmyk": (256, 171), "deep": (256, 160), "strip": (1, 256)}
    rows = table_rows(tmp_path)
    for name, size in expected.items():
        with Image.open(io.BytesIO(thumb(tmp_path, name, tag))) as image:
            assert (image.format, image.size, image.mode) == ("JPEG", size, "RGB"), name
            assert getattr(image, "n_frames", 1) == 1
        assert rows[name]["status"] == "ok", name
        assert (rows[name]["width"], rows[name]["height"]) == size
    # CMYK (0, 200, 200, 0) is a red; the strip keeps its colour.
    with Image.open(io.BytesIO(thumb(tmp_path, "cmyk", tag))) as image:
        red = image.getpixel((100, 80))
        assert red[0] > 200 and red[1] < 90
    with Image.open(io.BytesIO(thumb(tmp_path, "strip", tag))) as image:
        assert abs(image.getpixel((0, 100))[2] - 200) < 12


def test_images_within_max_side_keep_their_bytes(server: ImageServer, tmp_path: Path) -> None:
    served = {"exact": make_jpeg("exact", (300, 200)), "smaller": make_jpeg("smaller", (120, 90)),
              "png": encode(Image.new("RGB", (300, 10), (1, 2, 3)), "PNG"),
              "larger": make_jpeg("larger", (301, 200))}
    catalog = serve(server, tmp_path, served)
    run(tmp_path, catalog, settings_file(tmp_path, max_side=300))
    tag = tag_of(max_side=300)
    for name in ("exact", "smaller", "png"):
        assert thumb(tmp_path, name, tag) == served[name], name
    assert thumb(tmp_path, "larger", tag) != served["larger"]
    rows = table_rows(tmp_path)
    assert rows["png"]["format"] == rows["png"]["source_format"] == "PNG"
    assert rows["exact"]["sha256"] == rows["exact"]["source_sha256"]
    assert (rows["larger"]["width"], rows["larger"]["height"]) == (300, 199)


def test_max_side_null_keeps_every_original(server: ImageServer, tmp_path: Path) -> None:
    served = {"big": make_jpeg("big", (1600, 1200)), **odd_images()}
    catalog = serve(server, tmp_path, served)
    settings = tmp_path / "settings.yaml"
    settings.write_text("thumbnail: {max_side: null}\nlocal_file_roots: []\n")
    run(tmp_path, catalog, settings)
    for name, data in served.items():
        assert thumb(tmp_path, name, layout.ORIGINALS_TAG) == data, name
    assert {r["thumbnail_settings"] for r in table_rows(tmp_path).values()} == {"original"}


def dry_run_count(tmp_path: Path, catalog: Path, settings: Path) -> int:
    """The plan's count of images to fetch whose thumbnails were made with other settings."""
    document = plan_of(tmp_path, "--configfile", str(settings), config={"catalog": str(catalog)})
    return int(document["fetch"]["other_settings"])


def test_changing_a_setting_makes_again_exactly_what_it_concerns(server: ImageServer,
                                                                 tmp_path: Path) -> None:
    served = {f"p{i}": make_jpeg(f"p{i}", (800, 600)) for i in range(5)}
    catalog = serve(server, tmp_path, served)
    results = tmp_path / "results"
    first = {"max_side": 256, "quality": 85}
    run(tmp_path, catalog, settings_file(tmp_path, **first))
    kept = {name: thumb(tmp_path, name, tag_of(**first)) for name in served}
    kept_times = {name: os.stat(layout.thumb_path(results, name, tag_of(**first))).st_mtime_ns
                  for name in served}
    # Three changes, the last one back to the first settings: their files are all still there.
    for change in ({"max_side": 256, "quality": 60}, {"max_side": 128, "quality": 60}, first):
        settings = settings_file(tmp_path, **change)
        before = server.total()
        expected = 0 if change == first else len(served)
        assert dry_run_count(tmp_path, catalog, settings) == expected, change
        assert server.total() == before
        run(tmp_path, catalog, settings)
        assert server.total() - before == expected, change
        rows = table_rows(tmp_path)
        assert {r["thumbnail_settings"] for r in rows.values()} == {tag_of(**change)}
        for name, row in rows.items():
            with Image.open(io.BytesIO(thumb(tmp_path, name, tag_of(**change)))) as image:
                assert (row["width"], row["height"]) == image.size
    # The first settings' thumbnails were never touched, and their rows are theirs again.
    for name, data in kept.items():
        path = layout.thumb_path(results, name, tag_of(**first))
        assert Path(path).read_bytes() == data
        assert os.stat(path).st_mtime_ns == kept_times[name]
    assert {r["width"] for r in table_rows(tmp_path).values()} == {256}


def test_a_run_from_before_thumbnail_settings_fetches_again(server: ImageServer,
                                                            tmp_path: Path) -> None:
    served = {f"o{i}": make_jpeg(f"o{i}") for i in range(3)}
    catalog = serve(server, tmp_path, served)
    results = tmp_path / "results"
    for name, data in served.items():
        legacy = results / layout.THUMBS / layout.shard_of(name) / f"{name}.img"
        legacy.parent.mkdir(parents=True, exist_ok=True)
        legacy.write_bytes(data)
    settings = settings_file(tmp_path, max_side=512)
    assert dry_run_count(tmp_path, catalog, settings) == 3
    run(tmp_path, catalog, settings)
    assert server.total() == 3
    for name, data in served.items():
        legacy = results / layout.THUMBS / layout.shard_of(name) / f"{name}.img"
        assert legacy.read_bytes() == data


CONCURRENCY = 4


@pytest.fixture
def slow_server() -> Iterator[ImageServer]:
    srv = ImageServer(delay=0.2).start()
    try:
        yield srv
    finally:
        srv.stop()


def whole_or_marker(path: Path) -> bool:
    """A finished thumbnail: an image that decodes to the end, or the empty failure marker."""
    data = path.read_bytes()
    if not data:
        return True
    try:
        decode_image(data)
    except ImageRejected:
        return False
    return True


def test_kill_9_while_thumbnails_are_written_leaves_only_whole_files(
        slow_server: ImageServer, tmp_path: Path) -> None:
    served = {f"k{i:03d}": make_jpeg(f"k{i:03d}", (1200, 900)) for i in range(240)}
    catalog = serve(slow_server, tmp_path, served)
    settings = settings_file(tmp_path, {"concurrency": CONCURRENCY}, max_side=256)
    config = {"catalog": str(catalog), "batch_size": "40"}
    folder = tmp_path / "results" / layout.THUMBS / tag_of(max_side=256)
    seen = 0
    for kill in range(3):
        process = subprocess.Popen(
            snakemake_command(tmp_path, "--configfile", str(settings), config=config),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 180
        while len([p for p in folder.glob("*/*.img")]) < seen + 20:
            assert process.poll() is None, f"the run ended before kill {kill + 1}"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        time.sleep(0.5)
        finished = list(folder.glob("*/*.img"))
        assert all(whole_or_marker(p) for p in finished), kill
        seen = len(finished)
        assert seen < len(served)
        run_snakemake(tmp_path, "--unlock", "--configfile", str(settings), config=config)
    run_snakemake(tmp_path, "--configfile", str(settings), config=config)
    finished = list(folder.glob("*/*.img"))
    assert len(finished) == len(served)
    assert all(whole_or_marker(p) for p in finished)
    rows = table_rows(tmp_path)
    assert {r["status"] for r in rows.values()} == {"ok"}
    # At most the images in flight at each kill were fetched again: per job, the downloads
    # running and the fetched images its measuring process had not stored.
    assert slow_server.total() <= len(served) + 3 * 2 * images_held(CONCURRENCY, 1)


def test_the_demo_config_names_a_thumbnail_section() -> None:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert set(config["thumbnail"]) == {"max_side", "format", "quality", "only_if_larger"}

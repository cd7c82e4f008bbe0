"""Pictures and tables for Snakemake's report, made from the feature table and the thumbnails.

Everything here is drawn with Pillow and written as plain PNG or self-contained HTML, so the
report Snakemake assembles from these files renders offline, with no plotting library and no
fonts or scripts fetched from anywhere.
"""

from __future__ import annotations

import html
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from thumbfeat import atomic, layout, storage
from thumbfeat.features import to_rgb_on_white
from thumbfeat.imaging import ImageRejected, decode_image
from thumbfeat.rows import STATUS_FAILED, STATUS_OK
from thumbfeat.runs import BatchRecord, group_runs, read_batch_records
from thumbfeat.wording import counts_text

DUPLICATE_COLUMN = "near_duplicate_group"
TILE = 150
LABEL_HEIGHT = 30
PAD = 6
BACKGROUND = (250, 250, 250)
INK = (30, 30, 30)
MUTED = (110, 110, 110)
BAR = (70, 110, 170)


@dataclass(frozen=True)
class ReportSettings:
    """What the report shows: which features rank the contact sheets, and how much of each."""

    rank_by: tuple[str, ...] = ("brightness_mean", "sharpness", "colorfulness")
    sheet_images: int = 24
    duplicate_groups: int = 12
    max_pixels: int = 89_478_485


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font: present wherever Pillow is, so nothing depends on system fonts."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow built without FreeType has only the bitmap font
        return ImageFont.load_default()


def numeric_features(rows: pa.Table) -> list[str]:
    """The measured numeric columns, in table order."""
    return [
        f.name for f in rows.schema
        if pa.types.is_floating(f.type) or pa.types.is_integer(f.type)
    ]


def ok_values(rows: pa.Table, column: str) -> list[tuple[str, float]]:
    """(id, value) of successfully measured images with a finite value in ``column``."""
    ok = rows.filter(pc.equal(rows.column("status"), STATUS_OK))
    pairs = zip(ok.column("image_id").to_pylist(), ok.column(column).to_pylist(), strict=True)
    return [(i, float(v)) for i, v in pairs if v is not None and math.isfinite(v)]


def ranked(rows: pa.Table, column: str, count: int, *, highest: bool) -> list[tuple[str, float]]:
    """The ``count`` images with the lowest (or highest) value; ties keep catalog order."""
    pairs = ok_values(rows, column)
    order = sorted(range(len(pairs)), key=lambda k: (-pairs[k][1] if highest else pairs[k][1], k))
    return [pairs[k] for k in order[:count]]


def thumbnail_tags(rows: pa.Table) -> dict[str, str]:
    """The thumbnail settings each row was measured with: where its thumbnail is."""
    return dict(zip(rows.column("image_id").to_pylist(),
                    rows.column("thumbnail_settings").to_pylist(), strict=True))


def load_tile(results: str | Path, image_id: str, tag: str | None,
              max_pixels: int) -> Image.Image:
    """An image's thumbnail fitted into a square tile (a grey tile when it cannot be read)."""
    tile = Image.new("RGB", (TILE, TILE), (220, 220, 220))
    try:
        if tag is None:
            raise FileNotFoundError(image_id)
        data = storage.get(layout.thumb_path(results, image_id, tag))
        picture = to_rgb_on_white(decode_image(data, max_pixels=max_pixels).image)
    except (OSError, ImageRejected):
        ImageDraw.Draw(tile).text((8, TILE // 2 - 8), "not readable", fill=MUTED, font=font(12))
        return tile
    picture.thumbnail((TILE, TILE))
    tile.paste(picture, ((TILE - picture.width) // 2, (TILE - picture.height) // 2))
    return tile


def format_value(value: float) -> str:
    if value == 0 or 0.01 <= abs(value) < 100_000:
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return f"{value:.2e}"


def clip_text(text: str, limit: int = 22) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def tile_grid(tiles: Sequence[tuple[Image.Image, str]], title: str, columns: int,
              rows_of: Sequence[int] | None = None) -> Image.Image:
    """Tiles with a label under each, ``columns`` to a row (or the given row lengths)."""
    lengths = list(rows_of) if rows_of is not None else [
        min(columns, len(tiles) - start) for start in range(0, len(tiles), columns)]
    widest = max(lengths, default=columns)
    width = max(480, PAD + max(widest, 1) * (TILE + PAD))
    title_height = 28
    height = title_height + PAD + max(len(lengths), 1) * (TILE + LABEL_HEIGHT + PAD)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, 6), title, fill=INK, font=font(16))
    if not tiles:
        draw.text((PAD, title_height + PAD + 20), "nothing to show", fill=MUTED, font=font(14))
        return sheet
    small = font(11)
    position = 0
    for row, length in enumerate(lengths):
        y = title_height + PAD + row * (TILE + LABEL_HEIGHT + PAD)
        for col in range(length):
            picture, label = tiles[position]
            position += 1
            x = PAD + col * (TILE + PAD)
            sheet.paste(picture, (x, y))
            for line_number, line in enumerate(label.split("\n")[:2]):
                draw.text((x, y + TILE + 2 + 13 * line_number), clip_text(line), fill=INK,
                          font=small)
    return sheet


def contact_sheet(rows: pa.Table, results: str | Path, column: str, *, highest: bool,
                  settings: ReportSettings) -> Image.Image:
    """The images with the lowest or highest value of a feature, labelled with id and value."""
    picked = ranked(rows, column, settings.sheet_images, highest=highest)
    tags = thumbnail_tags(rows)
    tiles = [(load_tile(results, i, tags[i], settings.max_pixels),
              f"{i}\n{column} {format_value(v)}") for i, v in picked]
    which = "highest" if highest else "lowest"
    return tile_grid(tiles, f"{column}: {which} {len(picked)} of "
                     f"{len(ok_values(rows, column))} images", columns=8)


def duplicate_groups(rows: pa.Table) -> list[list[str]]:
    """Groups of two or more images sharing a near-duplicate group label, largest first.

    The label is whatever the table stores (the group's smallest image id); it is only compared.
    """
    if DUPLICATE_COLUMN not in rows.column_names:
        return []
    members: dict[object, list[str]] = {}
    pairs = zip(rows.column("image_id").to_pylist(), rows.column(DUPLICATE_COLUMN).to_pylist(),
                strict=True)
    for image_id, group in pairs:
        if group is not None:
            members.setdefault(group, []).append(image_id)
    groups = [ids for ids in members.values() if len(ids) > 1]
    return sorted(groups, key=lambda ids: -len(ids))


def duplicate_sheet(rows: pa.Table, results: str | Path, settings: ReportSettings) -> Image.Image:
    """Each near-duplicate group on its own row, its images side by side."""
    if DUPLICATE_COLUMN not in rows.column_names:
        return tile_grid([], "near duplicates: not computed by this feature version", 8)
    groups = duplicate_groups(rows)
    shown = [ids[:8] for ids in groups[: settings.duplicate_groups]]
    tags = thumbnail_tags(rows)
    tiles = [(load_tile(results, i, tags[i], settings.max_pixels), f"{i}\ngroup {g + 1}")
             for g, ids in enumerate(shown) for i in ids]
    title = (f"near duplicates: {len(groups)} groups of {sum(map(len, groups))} images"
             + (f", the {len(shown)} largest shown" if len(shown) < len(groups) else ""))
    return tile_grid(tiles, title, columns=8, rows_of=[len(ids) for ids in shown])


def histogram(values: Sequence[float], title: str, bins: int = 30) -> Image.Image:
    """A bar histogram with its range and counts written on the axes."""
    width, height, left, bottom, top = 520, 260, 50, 40, 34
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), f"{title} ({len(values)} images)", fill=INK, font=font(15))
    plot_w, plot_h = width - left - 16, height - top - bottom
    draw.line([(left, top), (left, top + plot_h), (left + plot_w, top + plot_h)], fill=INK)
    if not values:
        draw.text((left + 20, top + plot_h // 2), "no values", fill=MUTED, font=font(13))
        return image
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    counts = Counter(min(bins - 1, int((v - low) / span * bins)) for v in values)
    peak = max(counts.values())
    bar_w = plot_w / bins
    for b in range(bins):
        bar_h = counts.get(b, 0) / peak * (plot_h - 4)
        if bar_h:
            x0 = left + 1 + b * bar_w
            draw.rectangle([x0, top + plot_h - bar_h, x0 + bar_w - 2, top + plot_h - 1],
                           fill=BAR)
    small = font(11)
    draw.text((left - 8, top + plot_h + 6), format_value(low), fill=INK, font=small)
    high_label = format_value(high)
    draw.text((left + plot_w - 7 * len(high_label), top + plot_h + 6), high_label, fill=INK,
              font=small)
    draw.text((6, top - 2), str(peak), fill=INK, font=small)
    draw.text((6, top + plot_h - 12), "0", fill=INK, font=small)
    return image


PAGE_STYLE = ("body{font-family:sans-serif;margin:1em;color:#222}"
              "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
              "text-align:left;vertical-align:top}th{background:#eee}")


def page(title: str, body: str) -> str:
    """A self-contained HTML page (inline style, nothing loaded from elsewhere)."""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{PAGE_STYLE}</style></head><body><h2>{html.escape(title)}</h2>"
            f"{body}</body></html>")


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def failures_page(rows: pa.Table, examples: int = 3) -> str:
    """Failed images by kind, with a few examples of each (id and error message)."""
    failed = rows.filter(pc.equal(rows.column("status"), STATUS_FAILED)).to_pylist()
    by_kind: dict[str, list[dict[str, object]]] = {}
    for row in failed:
        by_kind.setdefault(str(row["error_kind"]), []).append(row)
    lines = []
    for kind, members in sorted(by_kind.items(), key=lambda item: (-len(item[1]), item[0])):
        retry = sum(bool(m["retryable"]) for m in members)
        shown = "; ".join(f"{m['image_id']}: {m['error']}" for m in members[:examples])
        lines.append((kind, len(members), retry, shown))
    summary = f"<p>{len(failed)} of {rows.num_rows} images failed.</p>"
    if not lines:
        return page("Failures by kind", summary)
    return page("Failures by kind", summary + html_table(
        ["kind", "images", "retried by the next run", f"examples (up to {examples})"], lines))


def statistics_page(rows: pa.Table, records: Sequence[BatchRecord]) -> str:
    """The table's outcome counts, each run's rate, and what every recorded batch job did."""
    statuses = Counter(rows.column("status").to_pylist())
    body = "<h3>Feature table</h3>" + html_table(
        ["rows", *sorted(statuses)], [[rows.num_rows, *(statuses[s] for s in sorted(statuses))]])
    runs = group_runs(records)
    body += (f"<h3>Runs</h3><p>Recorded batch jobs: {len(records)}, in runs: {len(runs)} "
             "(batch jobs that followed each other without a pause); the rate counts jobs "
             "running side by side once.</p>")
    if runs:
        body += html_table(
            ["finished", "batches", "images", "wall seconds", "images/s", "failed by kind"],
            [[r.finished.strftime("%Y-%m-%d %H:%M:%S"), len(r.batches), r.images,
              f"{r.wall_seconds:.1f}", f"{r.rate:.1f}", counts_text(r.failed_by_kind)]
             for r in reversed(runs)])
        body += "<h3>Batch jobs</h3>" + html_table(
            ["batch", "started", "seconds", "downloaded", "measured", "images/s per job",
             "failed by kind"],
            [[b.key, b.started.strftime("%Y-%m-%d %H:%M:%S"), f"{b.seconds:.1f}", b.downloaded,
              b.measured, f"{b.images / b.seconds:.1f}" if b.seconds else "-",
              counts_text(b.failed_by_kind)] for b in reversed(records)])
    return page("Run statistics", body)


def sheet_name(column: str, highest: bool) -> str:
    return f"{column}-{'highest' if highest else 'lowest'}"


def build_report(table_path: str | Path, results: str | Path, *, sheets_dir: str | Path,
                 histograms_dir: str | Path, duplicates_path: str | Path,
                 failures_path: str | Path, statistics_path: str | Path,
                 settings: ReportSettings, logger: logging.Logger) -> None:
    """Write every report file; features the table lacks are skipped and said so in the log."""
    rows = pq.read_table(table_path)
    numeric = numeric_features(rows)
    for folder in (sheets_dir, histograms_dir):
        Path(folder).mkdir(parents=True, exist_ok=True)
    ranking = [c for c in settings.rank_by if c in numeric]
    skipped = [c for c in settings.rank_by if c not in numeric]
    if skipped:
        logger.info("contact sheets: no numeric column %s in the table; skipped", skipped)
    for column in ranking:
        for highest in (False, True):
            save_png(contact_sheet(rows, results, column, highest=highest, settings=settings),
                     Path(sheets_dir) / f"{sheet_name(column, highest)}.png")
    if not ranking:
        save_png(tile_grid([], "no ranking feature present in the table", 8),
                 Path(sheets_dir) / "none.png")
    drawn = 0
    for column in numeric:
        values = [v for _, v in ok_values(rows, column)]
        if values:  # a column no image has a value in says nothing
            save_png(histogram(values, column), Path(histograms_dir) / f"{column}.png")
            drawn += 1
    save_png(duplicate_sheet(rows, results, settings), Path(duplicates_path))
    atomic.write_bytes(failures_path, failures_page(rows).encode())
    records = read_batch_records(results)
    atomic.write_bytes(statistics_path, statistics_page(rows, records).encode())
    logger.info("report: %d contact sheets, %d histograms, %d near-duplicate groups, "
                "%d batch manifests", 2 * len(ranking), drawn,
                len(duplicate_groups(rows)), len(records))


def save_png(image: Image.Image, path: Path) -> None:
    atomic.write_with(path, lambda tmp: image.save(tmp, format="PNG", optimize=True))

"""Tests for thumbfeat.report and the Snakemake report, rendered in headless Chromium."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from thumbfeat import layout
from thumbfeat.report import (
    ReportSettings,
    build_report,
    duplicate_groups,
    failures_page,
    histogram,
    numeric_features,
    ranked,
    statistics_page,
)
from thumbfeat.rows import ROW_SCHEMA, failed_row, ok_row
from thumbfeat.runs import parse_manifest

from tests.support import (
    REPO,
    TAG,
    ImageServer,
    image_rows,
    make_jpeg,
    run_snakemake,
    write_catalog,
)

ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def rows_table(extra: dict[str, list[object]] | None = None) -> pa.Table:
    """Five rows: four measured (brightness 0.4, 0.1, 0.9, 0.5), one failed."""
    rows = [ok_row(i, {"brightness_mean": b, "sharpness": s, "width": 10}, "v1")
            for i, b, s in (("a", 0.4, 5.0), ("b", 0.1, 1.0), ("c", 0.9, 3.0), ("d", 0.5, 2.0))]
    rows.append(failed_row("e", "http_status", "HTTP 404", retryable=False,
                                 feature_version="v1"))
    built = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
    for name, values in (extra or {}).items():
        if name in built.column_names:
            field = built.schema.field(name)
            built = built.set_column(built.schema.get_field_index(name), field,
                                     pa.array(values, type=field.type))
        else:
            built = built.append_column(name, pa.array(values, type=pa.int64()))
    return built


def test_ranking_uses_measured_rows_only() -> None:
    rows = rows_table()
    assert ranked(rows, "brightness_mean", 2, highest=False) == [("b", 0.1), ("a", 0.4)]
    assert ranked(rows, "brightness_mean", 3, highest=True) == [("c", 0.9), ("d", 0.5),
                                                                ("a", 0.4)]
    assert "brightness_mean" in numeric_features(rows)
    assert "image_id" not in numeric_features(rows)
    assert "retryable" not in numeric_features(rows)


def test_duplicate_groups_ignore_singletons_and_nulls() -> None:
    rows = rows_table({"near_duplicate_group": ["a", None, "a", "d", None]})
    assert duplicate_groups(rows) == [["a", "c"]]
    assert "near_duplicate_group" not in numeric_features(rows)
    assert duplicate_groups(rows_table()) == []


def test_histogram_is_a_picture_with_bars() -> None:
    picture = histogram([0.0, 0.1, 0.1, 1.0], "x")
    colours = {c for _, c in picture.getcolors(maxcolors=100_000) or []}
    assert (70, 110, 170) in colours  # the bar colour
    assert histogram([], "empty").size == picture.size


def test_failures_and_statistics_pages() -> None:
    rows = rows_table()
    failures = failures_page(rows)
    assert "1 of 5 images failed" in failures
    assert re.search(r"<td>http_status</td><td>1</td><td>0</td><td>e: HTTP 404</td>", failures)
    record = parse_manifest({
        "batch": "00001-x", "seconds": 2.0, "started": 1767225600.0, "finished": 1767225602.0,
        "finished_at": "2026-01-01T00:00:02+0000", "download": {
            "images": 10, "failed_by_kind": {"timeout": 1}},
        "features": {"images": 8, "failed_by_kind": {"timeout": 1}}})
    assert record is not None
    stats = statistics_page(rows, [record])
    assert "Recorded batch jobs: 1, in runs: 1 " in stats
    assert ("<td>1</td><td>10</td><td>2.0</td><td>5.0</td><td>timeout 1</td></tr>") in stats
    assert "<td>failed</td>" not in stats and "<th>failed</th>" in stats
    for page in (failures, stats):
        assert "http://" not in page and "https://" not in page


def test_build_report_skips_absent_features(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    results = tmp_path / "results"
    rows = rows_table({"near_duplicate_group": ["a", "a", "c", "c", None]})
    for image_id in "abcd":
        path = Path(layout.thumb_path(results, image_id, TAG))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make_jpeg(image_id, (64, 48)))
    table_path = tmp_path / "table.parquet"
    pq.write_table(rows, table_path)
    out = tmp_path / "report"
    logger = logging.getLogger("test-report")
    with caplog.at_level(logging.INFO, logger="test-report"):
        build_report(table_path, results, sheets_dir=out / "sheets",
                     histograms_dir=out / "histograms", duplicates_path=out / "dups.png",
                     failures_path=out / "failures.html", statistics_path=out / "stats.html",
                     settings=ReportSettings(rank_by=("brightness_mean", "future_score"),
                                             sheet_images=3), logger=logger)
    assert sorted(p.name for p in (out / "sheets").iterdir()) == [
        "brightness_mean-highest.png", "brightness_mean-lowest.png"]
    assert {p.name for p in (out / "histograms").iterdir()} == {
        "brightness_mean.png", "sharpness.png", "width.png"}
    assert "['future_score']" in caplog.text
    assert "2 near-duplicate groups" in caplog.text
    # Two groups of two: two rows of tiles, wider than tall.
    sheet = Image.open(out / "dups.png")
    assert sheet.width > sheet.height > 2 * 150


# --- The whole report, rendered in a browser --------------------------------------------------


def chromium_driver(user_data: Path):  # type: ignore[no-untyped-def]
    """Debian's Chromium, headless, cut off from the network, driven by Debian's chromedriver."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: run `bash .ci/install-debian-packages` "
                    "(installs Debian's chromium and chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                     "--disable-extensions", "--proxy-server=127.0.0.1:9",
                     f"--user-data-dir={user_data}", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(condition, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


@pytest.fixture
def report_html(tmp_path: Path, server: ImageServer) -> Iterator[Path]:
    """A finished run with ok and failed images, its report figures, and Snakemake's report."""
    rows = [*image_rows(server, [f"r{i:02d}" for i in range(30)]),
            ("gone1", f"{server.base}/missing/gone1.jpg"),
            ("page1", f"{server.base}/html/page1.jpg")]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    config = {"catalog": str(catalog), "local_file_roots": "[]"}
    run_snakemake(tmp_path, config=config)
    run_snakemake(tmp_path, "report_figures", config=config)
    result = run_snakemake(tmp_path, "report_figures", "--report", "report.html", config=config)
    assert "Report created" in result.stdout + result.stderr
    yield tmp_path / "report.html"


def test_report_renders_offline_with_every_image(report_html: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    text = report_html.read_text()
    # Nothing is loaded from elsewhere: no script, stylesheet or image by URL.
    assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=[\"']?(https?:)?//", text)
    ARTIFACTS.mkdir(exist_ok=True)
    driver = chromium_driver(tmp_path / "chromium-profile")
    try:
        driver.get(report_html.as_uri())
        expected = wait_for(lambda: driver.execute_script(
            "return typeof results === 'object' && document.querySelector('nav') "
            "? Object.keys(results).length : 0"))
        # Every picture and page the rule drew is in the report: 2 sheets per ranked feature
        # present, a histogram per numeric feature, near duplicates, failures, statistics.
        drawn = report_html.parent / "results" / "report"
        sheets = sorted(p.name for p in (drawn / "sheets").glob("*.png"))
        assert {"brightness_mean-lowest.png", "sharpness-highest.png"} <= set(sheets)
        histograms = list((drawn / "histograms").glob("*.png"))
        assert len(histograms) >= 7
        assert expected == len(sheets) + len(histograms) + 3
        checked = {}
        for category in ("Contact sheets", "Histograms", "Near duplicates", "Failures",
                         "Run statistics"):
            checked.update(view_category(driver, category))
        assert len(checked) == expected
        assert all(checked.values()), checked
        requests = [json.loads(entry["message"])["message"]
                    for entry in driver.get_log("performance")]
        urls = {r["params"]["request"]["url"] for r in requests
                if r["method"] == "Network.requestWillBeSent"}
        assert not [u for u in urls if u.startswith(("http:", "https:", "ws:"))], urls
    finally:
        driver.quit()
    with capsys.disabled():
        print(f"\nreport screenshots kept in {ARTIFACTS}")


def click(driver, element) -> None:  # type: ignore[no-untyped-def]
    """Click as a person's click does, whatever lies over the element for a moment."""
    driver.execute_script("arguments[0].click();", element)


def view_category(driver, category: str) -> dict[str, bool]:  # type: ignore[no-untyped-def]
    """Open a category from the menu, view each of its results; True where it rendered."""
    from selenium.webdriver.common.by import By

    if not driver.find_elements(By.LINK_TEXT, category):
        # The breadcrumb back to the menu. Clicked through the page's own script: the report's
        # sticky header may lie over the link while it animates, which Selenium reports as an
        # intercepted click.
        click(driver, driver.find_element(By.LINK_TEXT, "Results"))
    click(driver, wait_for(lambda: driver.find_elements(By.LINK_TEXT, category))[0])
    rows = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "tr div[role=group]"))
    outcome = {}
    for index in range(len(rows)):
        group = driver.find_elements(By.CSS_SELECTOR, "tr div[role=group]")[index]
        path = group.find_element(By.XPATH, "ancestor::tr").text.strip()
        click(driver, group.find_elements(By.TAG_NAME, "a")[0])  # the eye: view the result
        if path.endswith(".html"):
            outcome[path] = bool(wait_for(lambda: frame_text(driver)))
        else:
            outcome[path] = bool(wait_for(lambda: driver.execute_script(
                "const imgs = [...document.querySelectorAll('img')]"
                "  .filter(i => i.src.startsWith('data:image/png'));"
                "return imgs.length === 1 && imgs[0].complete && imgs[0].naturalWidth > 0"
                "  ? imgs[0].naturalWidth : 0")))
        if index == 0:
            name = re.sub(r"\W+", "-", category.lower())
            driver.save_screenshot(str(ARTIFACTS / f"report-{name}.png"))
    # Every <img> on the page (the logo and icons included) loaded.
    broken = driver.execute_script(
        "return [...document.querySelectorAll('img')]"
        "  .filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 60))")
    assert broken == [], broken
    return outcome


def frame_text(driver) -> str:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    frames = driver.find_elements(By.TAG_NAME, "iframe")
    if not frames:
        return ""
    driver.switch_to.frame(frames[0])
    try:
        return driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.switch_to.default_content()


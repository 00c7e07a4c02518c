"""`enhancer report` in a real browser: headless Chromium opens the report from file:// and the tests click through it.

Two reports: the 16 real sample X-rays (plus two broken files, rejected) enhanced with the demonstration model, and a
2,000-sample synthetic dataset with every localisation metric, a cycle summary and an audit. Every expected count
is computed here from the shards with plain h5py. Chromium comes from Debian (`make test-tools` installs it); under
CI=true a missing Chromium fails these tests (tests/conftest.py turns the skip into a failure).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from enhancer.cli import main
from enhancer.enhance import merge_enhanced, run_enhance
from enhancer.specs import EnhanceSpec
from tests.tools.missing import require_command, require_module
from tests.tools.report_synth import make_audit_dir, write_report_dataset
from tests.tools.sigmoid_case import enhance_case, sigmoid_case

require_module("websocket", install="websocket-client==1.9.2")
CHROMIUM = require_command(
    "chromium", install="make test-tools installs it (as root: apt-get install --no-install-recommends chromium)"
)

from tests.tools.browser import Chromium, Page  # noqa: E402 (needs websocket-client, checked above)

READY = "document.body.dataset.state === 'ready'"
GOOD = 0.85


def shard_table(dataset: Path) -> dict[str, np.ndarray]:
    """label, pred, prob, path and the metrics of every sample, read shard after shard with plain h5py."""
    parts: dict[str, list[np.ndarray]] = {}
    for shard in sorted(dataset.glob("shard-*.h5")):
        with h5py.File(shard, "r") as f:
            for name in ("label", "pred", "prob", "path", "lung_energy", "box_iou"):
                if name in f:
                    parts.setdefault(name, []).append(f[name].asstr()[:] if name == "path" else f[name][:])
    cols = {k: np.concatenate(v) for k, v in parts.items()}
    cols["conf"] = np.round(cols["prob"][np.arange(len(cols["pred"])), cols["pred"]], 4)
    cols["correct"] = cols["label"] == cols["pred"]
    return cols


def shard_rejected(dataset: Path) -> list[list[str]]:
    rows = []
    for shard in dataset.glob("shard-*.h5"):
        with h5py.File(shard, "r") as f:
            g = f["rejected"]
            cols = [g["index"][:].astype(str), *(g[c].asstr()[:] for c in ("path", "code", "message"))]
            rows += [list(r) for r in zip(*cols, strict=True)]
    return sorted(rows, key=lambda r: int(r[0]))


def report(dataset: Path, out: Path, *args: str) -> Path:
    result = CliRunner().invoke(main, ["report", str(dataset), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def browser():
    with Chromium(CHROMIUM) as b:
        yield b


@pytest.fixture(scope="module")
def demo(tmp_path_factory, kermany_dir, demo_checkpoints) -> tuple[Path, Path]:
    """(dataset, report) of the 16 samples + a broken and an empty file, enhanced with the demo TinyVGG."""
    root = tmp_path_factory.mktemp("demo")
    data = root / "input"
    shutil.copytree(kermany_dir, data)
    (data / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8 this is not a JPEG")
    (data / "PNEUMONIA" / "empty.jpeg").write_bytes(b"")
    dataset = root / "enhanced"
    spec = EnhanceSpec(data=str(data), out=str(dataset), checkpoint=str(demo_checkpoints["tinyvgg"]))
    run_enhance(spec, progress=False)
    merge_enhanced(dataset)
    return dataset, report(dataset, root / "report")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset, report) of 2,000 synthetic samples, every sample in the gallery, with a cycle and an audit."""
    root = tmp_path_factory.mktemp("synth")
    dataset = write_report_dataset(root / "synth", n=2000, rejected=7)
    (root / "cycle").mkdir()
    rounds = [{"round": k, "loss": 0.6 - 0.1 * k, "accuracy": 0.7 + 0.05 * k, "auroc": 0.8} for k in range(3)]
    (root / "cycle" / "summary.json").write_text(json.dumps({"rounds": rounds}))
    audit = make_audit_dir(root / "audit")
    return dataset, report(
        dataset, root / "report", "--limit", "0", "--cycle", str(root / "cycle"), "--audit", str(audit)
    )


@pytest.fixture(scope="module")
def per_class(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(dataset, report, audit.json) of 8 synthetic images explained for each of 3 sigmoid classes, audited."""
    root = tmp_path_factory.mktemp("per-class")
    case = sigmoid_case(root / "case", n=8)
    dataset = enhance_case(case, root / "enhanced", "--explain", "all")
    args = ["audit", str(dataset), "--checkpoint", str(case.checkpoint), "--out", str(root / "audit"), "--samples", "0"]
    audited = CliRunner().invoke(main, [*args, "--boxes", str(case.boxes), "--no-progress", "--set", "resamples=100"])
    assert audited.exit_code == 0, audited.output
    doc = json.loads((root / "audit" / "audit.json").read_text())
    return dataset, report(dataset, root / "report", "--audit", str(root / "audit")), doc


def open_report(browser: Chromium, out: Path, fragment: str = "") -> Page:
    page = browser.open((out / "index.html").resolve().as_uri() + fragment)
    page.wait_for(READY)
    return page


def click(page: Page, element_id: str) -> None:
    """Click a gallery control and wait until the gallery shows the result."""
    page.evaluate(f"document.getElementById('{element_id}').click()")
    page.wait_for(READY)


def set_value(page: Page, element_id: str, value: str) -> None:
    """Type into an input (or choose in a select) and commit it, as a user does."""
    page.evaluate(
        f"(() => {{ const e = document.getElementById('{element_id}'); e.value = '{value}'; "
        "e.dispatchEvent(new Event('change')); })()"
    )
    page.wait_for(READY)


def shown(page: Page) -> tuple[int, list[int]]:
    """(match count, dataset positions of the cards on screen)."""
    count = int(page.evaluate("document.getElementById('match-count').textContent"))
    return count, page.evaluate("Array.from(document.querySelectorAll('#cards .card')).map(c => +c.dataset.pos)")


def images_loaded(page: Page, selector: str) -> bool:
    """Scroll every image of ``selector`` into view (lazy loading), then wait until each has decoded pixels."""
    page.evaluate(f"document.querySelectorAll('{selector}').forEach(i => i.scrollIntoView())")
    return page.wait_for(
        f"Array.from(document.querySelectorAll('{selector}')).every(i => i.complete && i.naturalWidth > 0)"
    )


def assert_offline_and_clean(page: Page) -> None:
    assert page.console_errors == []
    assert page.foreign_requests() == []
    assert any(u.endswith("/data/chunk-00000.js") for u in page.requests)


# ---- the 16 sample X-rays ----------------------------------------------------------------------------------------


def test_demo_report_loads_from_file_with_every_card_and_image(browser, demo) -> None:
    dataset, out = demo
    page = open_report(browser, out)
    assert shown(page) == (16, list(range(16)))
    assert images_loaded(page, "#cards img")
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))
    assert shot.shape[1] == 1280 and shot.shape[0] > 600
    assert shot.std() > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 200  # text, charts and X-rays
    assert_offline_and_clean(page)


def test_demo_filters_match_the_shards(browser, demo) -> None:
    dataset, out = demo
    t = shard_table(dataset)
    page = open_report(browser, out)
    for k in range(2):
        click(page, f"filter-label-{k}")
        assert shown(page) == (int((t["label"] == k).sum()), np.flatnonzero(t["label"] == k).tolist())
    click(page, "filter-label-all")
    click(page, "filter-pred-1")
    assert shown(page)[0] == int((t["pred"] == 1).sum())
    click(page, "filter-pred-all")
    click(page, "filter-result-wrong")
    assert shown(page)[1] == np.flatnonzero(~t["correct"]).tolist()
    assert page.evaluate("Array.from(document.querySelectorAll('#cards .card')).every(c => c.matches('.wrong'))")
    click(page, "filter-result-good")
    assert shown(page)[1] == np.flatnonzero(t["correct"] & (t["prob"].max(1) >= GOOD)).tolist()
    click(page, "filter-result-correct")
    click(page, "filter-label-0")
    assert shown(page)[0] == int((t["correct"] & (t["label"] == 0)).sum()) > 0
    assert_offline_and_clean(page)


def test_demo_sort_sample_page_and_keyboard(browser, demo) -> None:
    dataset, out = demo
    t = shard_table(dataset)
    page = open_report(browser, out)
    set_value(page, "sort", "conf:desc")
    order = np.lexsort((np.arange(16), -t["conf"])).tolist()
    assert shown(page)[1] == order

    def shows(k: int) -> None:
        i = order[k]
        page.wait_for(f"document.getElementById('sample-path').textContent === {json.dumps(str(t['path'][i]))}")
        assert page.evaluate("document.getElementById('sample-prob').textContent") == f"{t['conf'][i]:.4f}"
        assert page.evaluate("document.getElementById('sample-title').textContent").startswith(f"{k + 1} of 16")

    page.evaluate("document.querySelector('#cards .card').click()")
    shows(0)
    page.press("ArrowRight")
    shows(1)
    page.press("ArrowRight")
    shows(2)
    page.press("ArrowLeft")
    shows(1)
    assert page.evaluate("location.hash") == f"#sample={order[1]}"
    assert images_loaded(page, "#sample-strip")
    assert page.evaluate("document.getElementById('sample-strip').naturalWidth") == 4 * 224
    page.press("Escape")
    assert page.evaluate("document.getElementById('sample').hidden") is True
    assert_offline_and_clean(page)


def test_demo_rejected_table_lists_exactly_the_rejected_rows(browser, demo) -> None:
    dataset, out = demo
    page = open_report(browser, out)
    page.wait_for("document.querySelectorAll('#rejected-table tbody tr').length > 0")
    table = page.evaluate(
        "Array.from(document.querySelectorAll('#rejected-table tbody tr'))"
        ".map(r => Array.from(r.cells).map(c => c.textContent))"
    )
    with open(dataset / "rejected.csv", newline="") as f:
        csv_rows = list(csv.reader(f))[1:]
    assert table == csv_rows == shard_rejected(dataset)
    assert sorted(Path(r[1]).name for r in table) == ["broken.jpeg", "empty.jpeg"]
    assert_offline_and_clean(page)


# ---- 2,000 synthetic samples ---------------------------------------------------------------------------------------


def test_large_report_index_is_small_and_pages_load_on_demand(browser, synth) -> None:
    dataset, out = synth
    assert (out / "index.html").stat().st_size < 200 * 1024
    page = open_report(browser, out)
    assert shown(page) == (2000, list(range(60)))
    assert page.evaluate("document.getElementById('page-info').textContent") == "page 1 of 34"
    loaded = [u for u in page.requests if "/data/chunk-" in u]
    assert [Path(u).name for u in loaded] == ["chunk-00000.js"]  # only the page on screen
    for _ in range(9):
        click(page, "pager-next")
    assert shown(page)[1] == list(range(540, 600))
    assert sorted(Path(u).name for u in page.requests if "/data/chunk-" in u) == ["chunk-00000.js", "chunk-00001.js"]
    assert images_loaded(page, "#cards img")
    assert_offline_and_clean(page)


def test_large_report_filters_and_ranges_match_the_shards(browser, synth) -> None:
    dataset, out = synth
    t = shard_table(dataset)
    page = open_report(browser, out)
    click(page, "filter-label-2")
    assert shown(page)[0] == int((t["label"] == 2).sum())
    click(page, "filter-pred-0")
    both = (t["label"] == 2) & (t["pred"] == 0)
    assert shown(page) == (int(both.sum()), np.flatnonzero(both)[:60].tolist())
    click(page, "filter-label-all")
    click(page, "filter-pred-all")
    click(page, "filter-result-good")
    assert shown(page)[0] == int((t["correct"] & (t["prob"].max(1) >= GOOD)).sum())
    click(page, "filter-result-wrong")
    set_value(page, "range-lung_energy-min", "0.25")
    set_value(page, "range-lung_energy-max", "0.75")
    lung = np.round(t["lung_energy"].astype(np.float64), 6)
    in_range = ~t["correct"] & (lung >= 0.25) & (lung <= 0.75)  # NaN (undefined) is outside every range
    assert shown(page) == (int(in_range.sum()), np.flatnonzero(in_range)[:60].tolist())
    set_value(page, "range-box_iou-min", "0.5")
    iou = np.round(t["box_iou"].astype(np.float64), 6)
    assert shown(page)[0] == int((in_range & (iou >= 0.5)).sum()) > 0
    assert page.evaluate("document.getElementById('page-info').textContent").startswith("page 1 of ")
    assert_offline_and_clean(page)


def test_large_report_sorts_by_metric_and_opens_a_linked_sample(browser, synth) -> None:
    dataset, out = synth
    t = shard_table(dataset)
    page = open_report(browser, out)
    set_value(page, "sort", "box_iou:desc")
    iou = np.round(t["box_iou"].astype(np.float64), 6)
    defined = np.flatnonzero(np.isfinite(iou))
    order = defined[np.lexsort((defined, -iou[defined]))].tolist() + np.flatnonzero(np.isnan(iou)).tolist()
    assert shown(page)[1] == order[:60]
    click(page, "pager-next")
    assert shown(page)[1] == order[60:120]
    set_value(page, "sort", "conf:asc")
    assert shown(page)[1] == np.lexsort((np.arange(2000), t["conf"]))[:60].tolist()
    linked = open_report(browser, out, "#sample=1234")
    linked.wait_for(f"document.getElementById('sample-path').textContent === {json.dumps(str(t['path'][1234]))}")
    assert linked.evaluate("document.getElementById('sample-prob').textContent") == f"{t['conf'][1234]:.4f}"
    assert_offline_and_clean(page)
    assert_offline_and_clean(linked)


def test_large_report_shows_cycle_audit_and_rejected_rows(browser, synth) -> None:
    dataset, out = synth
    page = open_report(browser, out)
    assert page.evaluate("document.querySelectorAll('#cycle svg circle').length") == 9  # 3 series x 3 rounds
    assert page.evaluate("document.querySelector('#audit .verdict').textContent") == "fail"
    assert images_loaded(page, "#audit img")
    page.wait_for("document.querySelectorAll('#rejected-table tbody tr').length === 7")
    cells = page.evaluate(
        "Array.from(document.querySelectorAll('#rejected-table tbody tr')).map(r => r.cells[3].textContent)"
    )
    assert cells == [r[3] for r in shard_rejected(dataset)] and cells[0] == 'cannot decode "bad,0.png" <truncated>'
    assert_offline_and_clean(page)


# ---- a dataset of maps per class (multi-label) ----------------------------------------------------------------------


def test_per_class_report_has_a_section_per_explained_class_with_its_maps_and_audit(browser, per_class) -> None:
    dataset, out, audit = per_class
    [shard] = sorted(dataset.glob("shard-*.h5"))
    with h5py.File(shard, "r") as f:
        explained = f["explained"][:]
    names = json.loads((dataset / "manifest.json").read_text())["class_names"]
    with_maps = [n for c, n in enumerate(names) if (explained == c).any()]
    page = open_report(browser, out)
    assert shown(page) == (8, list(range(8)))
    sections = page.evaluate(
        "Array.from(document.querySelectorAll('section.explained-class')).map(s => s.dataset.class)"
    )
    assert sections == with_maps == list(audit["classes"]) == ["top", "bottom", "left"]
    for c, name in enumerate(names):
        sel = f"#class-{c}"
        n_maps = int((explained == c).any(1).sum())
        assert page.evaluate(f"document.querySelectorAll('{sel} .class-thumb img').length") == min(12, n_maps)
        assert images_loaded(page, f"{sel} .class-thumb img")
        assert (
            page.evaluate(f"document.querySelector('{sel} h3 .verdict').textContent")
            == audit["classes"][name]["verdict"]
        )
        figures = page.evaluate(
            f"Array.from(document.querySelectorAll('{sel} .figures img')).map(i => i.getAttribute('src'))"
        )
        assert figures == [f"audit/{f}" for f in audit["classes"][name]["figures"]] and figures
        assert images_loaded(page, f"{sel} .figures img")
    rows = page.evaluate(
        "Array.from(document.querySelectorAll('#audit table.audit-classes tbody tr')).map(r => r.cells[2].textContent)"
    )
    assert rows == [audit["classes"][n]["verdict"] for n in names]
    assert page.evaluate("document.querySelector('#audit .verdict').textContent") == audit["verdict"]
    assert page.evaluate("document.querySelector('#cards .card .title').textContent").startswith("top: ")
    assert_offline_and_clean(page)

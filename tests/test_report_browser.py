"""The HTML report in a real browser: headless Chromium loads every image, logs no error,
and takes a screenshot (kept in the test's tmp dir; its path is printed)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]
# Injected into a copy of the page, first thing in <head>: records script errors and
# failed resources (which do not bubble, hence the capture phase), then, once the page
# has loaded, the load state of every <img> into the DOM for --dump-dom to show.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(e.message || ('failed to load ' + (e.target && (e.target.src || e.target.href))));
}, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var state = {n: imgs.length,
               loaded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
               widths: imgs.map(function (i) { return i.naturalWidth; }),
               errors: window.__errors};
  var pre = document.createElement('pre');
  pre.id = '__probe';
  pre.textContent = JSON.stringify(state);
  document.body.appendChild(pre);
});
</script>"""

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium) is not installed")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=180,
    )


@pytest.fixture(scope="module")
def report_page(tmp_path_factory, digits_gm_run: Path) -> dict:
    """A report with every kind of figure: a private copy of the GM run, an FGSM set, detection."""
    from gmcli.attacks import AttackConfig, run_attack
    from gmcli.detectors import run_detection
    from gmcli.reports import make_report

    root = tmp_path_factory.mktemp("browser")
    run = root / "gm"
    run.mkdir()
    for name in ("checkpoint.safetensors", "recipe.yaml", "metrics.jsonl", "train.json"):
        shutil.copy2(digits_gm_run / name, run / name)
    run_attack(run, config=AttackConfig(method="fgsm", eps=[0.1, 0.2], limit=60), device="cpu")
    run_detection(run, device="cpu")
    result = make_report([run], overrides={"out": str(root / "report"), "max_points": 300,
                                           "formats": ["html", "json"]})
    return {"html": Path(result.files["html"]), "figures": result.figures}


def test_every_image_loads_and_the_console_stays_clean(report_page, tmp_path, record_property):
    page: Path = report_page["html"]
    n_figures = len(report_page["figures"])
    assert n_figures >= 6

    # 1. A probed copy of the page: the DOM after load tells which images decoded.
    text = page.read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("<head>", "<head>\n" + PROBE, 1))
    dom = chromium(tmp_path, "--dump-dom", "--virtual-time-budget=10000", probed.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="__probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, "the probe did not run: " + dom.stdout[-500:]
    state = json.loads(html.unescape(found.group(1)))
    assert state["errors"] == []
    assert state["n"] == n_figures and state["loaded"] == n_figures, state
    assert min(state["widths"]) > 300

    # 2. The page itself, as a user opens it: no console message, no uncaught error.
    shot = tmp_path / "report-screenshot.png"
    res = chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--window-size=1280,2400",
                   f"--screenshot={shot}", page.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    console = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert console == []
    record_property("screenshot", str(shot))
    print(f"screenshot of the report: {shot}")

    # The screenshot is a real picture of a page, not a blank one.
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (2400, 1280)
    assert float(np.std(pixels[..., :3])) > 0.05

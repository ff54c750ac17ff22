"""The README's picture of the HTML report: the digits vanilla model on its 450 test images.

    python experiments/report_figure.py        # writes docs/report.png (needs Chromium; about 30 s)

Certifies models/digits/vanilla.onnx on models/digits/test.npy with --report and
--adversarial-out (the exact adversarial inputs are pictured), then has headless Chromium take a
screenshot of the page's first 1,900 pixels.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if browser is None:
        print("needs Chromium (apt-get install chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "report.html"
        subprocess.run([sys.executable, "-m", "lrcert.cli", "certify", "models/digits/vanilla.onnx", "models/digits/test.npy",
                        "-f", "jsonl", "-o", str(Path(folder) / "r.jsonl"), "--report", str(page),
                        "--adversarial-out", str(Path(folder) / "adv.npy")], cwd=ROOT, check=True)
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1250,1900", f"--screenshot={ROOT / 'docs' / 'report.png'}", page.as_uri()],
                       cwd=folder, check=True, capture_output=True)
    print(f"wrote {ROOT / 'docs' / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

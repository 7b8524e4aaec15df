"""The README's first command, at toy size: every step of the demo really runs, so a broken step cannot land."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_demo_small_runs_every_stage(tmp_path):
    run_dir = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "scripts/demo.py", "--small", "--run-dir", str(run_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in ("01_source", "02_synthetic", "03_labeled", "04_dataset"):
        assert (run_dir / "data" / stage / "manifest.json").exists(), stage
    assert (run_dir / "models" / "student" / "distill_config.json").exists()
    for name in ("base", "student"):
        ev = json.loads((run_dir / "reports" / name / "eval.json").read_text())
        assert ev["aggregate"]["n"] >= 1
    assert (run_dir / "reports" / "comparison" / "report.md").exists()
    assert "artifacts:" in proc.stdout and "teacher labels:" in proc.stdout

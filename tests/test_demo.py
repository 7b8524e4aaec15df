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
    labels = json.loads((run_dir / "data" / "03_labeled" / "manifest.json").read_text())["counts"]
    assert labels["accepted"] >= 2 and "teacher labels:" in proc.stdout
    # the teacher really is the 1.5B model served by llama.cpp, not a stand-in
    assert "llama-server with Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf" in proc.stdout
    assert (run_dir / "models" / "student" / "distill_config.json").exists()
    assert len(list((run_dir / "models" / "student" / "gguf").glob("*.gguf"))) == 1
    for name in ("base", "student"):
        ev = json.loads((run_dir / "reports" / name / "eval.json").read_text())
        assert ev["aggregate"]["n"] >= 1
    assert (run_dir / "reports" / "comparison" / "report.md").exists()
    assert "artifacts:" in proc.stdout

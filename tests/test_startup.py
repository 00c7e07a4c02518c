"""What the enhance command does before its first batch and after its last: no torchvision, no torch._dynamo (each
import costs seconds on a small CPU), the imports frozen out of the garbage collector's passes, and the inputs
validated in the background while the model loads, a check that stops when the job leaves early."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from enhancer.data.validate import ValidationStopped
from enhancer.enhance.inputs import check_inputs, checked_in_background, scan_inputs
from enhancer.specs import EnhanceSpec

REPO = Path(__file__).resolve().parents[1]


def test_the_enhance_command_imports_neither_torchvision_nor_dynamo(tmp_path, kermany_dir, demo_checkpoints):
    data = tmp_path / "data"
    for label in ("NORMAL", "PNEUMONIA"):
        (data / label).mkdir(parents=True)
        for image in sorted((kermany_dir / label).iterdir())[:2]:
            shutil.copy(image, data / label / image.name)
    code = (
        "import gc, sys\n"
        "from enhancer.cli.app import main\n"
        f"args = ['enhance', '--data', {str(data)!r}, '--checkpoint', {str(demo_checkpoints['resnet101'])!r},\n"
        f"        '--out', {str(tmp_path / 'out')!r}, '--device', 'cpu', '--no-progress']\n"
        "try:\n"
        "    main(args)\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "heavy = sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules)\n"
        "print(heavy, gc.get_freeze_count() > 10**5)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "[] True"
    assert "4 written, 0 rejected" in proc.stdout


def test_the_background_check_equals_the_check_and_stops_when_the_job_leaves_early(tmp_path, kermany_dir):
    spec = EnhanceSpec(data=str(kermany_dir), out=str(tmp_path / "out"), validate="full")
    found = scan_inputs(spec)
    with checked_in_background(spec, found.samples, "cpu", found) as checked:
        ok, rejected = checked()
    assert (ok, rejected) == check_inputs(spec, found.samples, "cpu", found) and len(ok) == 16
    with pytest.raises(RuntimeError, match="the model failed"):
        with checked_in_background(spec, list(found.samples) * 200, "cpu", found) as checked:
            raise RuntimeError("the model failed to load")
    with pytest.raises(ValidationStopped, match="3200 files stopped"):
        checked()

"""A quick multi-label case: synthetic images with a bright band per positive class, a ``path,top,bottom,left`` label
file, NIH-style boxes per finding, and a TinyVGG with 3 sigmoid outputs whose output layer is fitted to them with
BCE (its checkpoint records the sigmoid head); ``enhance_case`` makes a dataset of maps per class from it.

Usage::

    case = sigmoid_case(tmp_path, n=8)
    out = enhance_case(case, tmp_path / "all", "--explain", "all")     # merged; 3 maps per image
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from enhancer.cli import main
from enhancer.models.checkpoints import save_checkpoint
from enhancer.models.demo import calibrate_batchnorm, to_model_input
from enhancer.models.zoo import build_model, preprocessing_for
from tests.test_train_multilabel import CLASSES, _image

SIZE = 32  # the images' size and the model's input
# the band of each class in (x, y, w, h): top half, bottom half, left half (tests.test_train_multilabel._image)
BANDS = {"top": (0, 0, 32, 16), "bottom": (0, 16, 32, 16), "left": (0, 0, 16, 32)}


@dataclass(frozen=True)
class SigmoidCase:
    root: Path  # --data: the images are root/images/x<i>.png
    labels: Path  # path,top,bottom,left
    boxes: Path  # BBox_List_2017.csv layout: each positive image's band as the box of its finding
    checkpoint: Path
    targets: np.ndarray  # (n, 3) 0/1


def sigmoid_case(root: Path, n: int = 8, seed: int = 1) -> SigmoidCase:
    """Write ``n`` images (every class positive in some and negative in others), their labels and boxes, and the
    model."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 3)) < 0.5).astype(np.int8)
    targets[0], targets[1] = 1, 0  # each class both positive and negative
    (root / "images").mkdir(parents=True)
    lines = ["path," + ",".join(CLASSES)]
    boxes = ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]
    for i, t in enumerate(targets):
        Image.fromarray(_image(t, rng)).save(root / "images" / f"x{i}.png")
        lines.append(f"images/x{i}.png," + ",".join(map(str, t)))
        boxes += [f"x{i}.png,{c}," + ",".join(map(str, BANDS[c])) + ",," for c, v in zip(CLASSES, t, strict=True) if v]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    (root / "BBox_List_2017.csv").write_text("\n".join(boxes) + "\n")
    images = np.stack([np.asarray(Image.open(root / "images" / f"x{i}.png")) for i in range(n)])
    _save_model(root / "model.pt", images, targets, seed)
    return SigmoidCase(root, root / "labels.csv", root / "BBox_List_2017.csv", root / "model.pt", targets)


def _save_model(path: Path, images: np.ndarray, targets: np.ndarray, seed: int) -> None:
    """A TinyVGG with 3 outputs: random trunk, BatchNorm calibrated on the images, the output layer fitted to the
    targets with BCE (a logistic regression on the pooled features, as ``demo.fit_output_layer`` with softmax), saved
    with the sigmoid head recorded. Its maps are non-trivial, unlike those of a one-epoch training run."""
    preprocessing = preprocessing_for("tinyvgg", SIZE)
    x = to_model_input(torch.from_numpy(images)[:, None].float() / 255, preprocessing)
    torch.manual_seed(seed)
    model = build_model("tinyvgg", num_classes=len(CLASSES), input_size=SIZE)
    calibrate_batchnorm(model, [x])
    model.eval()
    fc = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    handle = fc.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    optimizer = torch.optim.Adam(fc.parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(fc(captured[0]), torch.from_numpy(targets).float()).backward()
        optimizer.step()
    meta = {"activation": "sigmoid"}
    save_checkpoint(str(path), model.eval(), preprocessing=preprocessing, class_names=CLASSES, meta=meta)


def enhance_case(case: SigmoidCase, out: Path, *extra: str) -> Path:
    """``enhance --labels`` of the case's images with its model (``extra``: e.g. ``--explain all``), merged."""
    args = ["enhance", "--labels", str(case.labels), "--data", str(case.root), "--checkpoint", str(case.checkpoint)]
    args += ["--out", str(out), "--loader", "torch", "--device", "cpu", "--no-progress", *extra]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    merged = CliRunner().invoke(main, ["merge", str(out)])
    assert merged.exit_code == 0, merged.output
    return out

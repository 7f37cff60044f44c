"""Grad-CAM speed, measured side by side in one run on the same inputs; prints ratios, not claims.

    .venv/bin/python bench/engine.py [--device cuda] [--batch 16] [--size 224] [--repeats 5]

Ratios (targets from issue #3): ours / plain inference (<= 1.15), pytorch-grad-cam / ours (>= 3),
torchcam / ours (>= 1.5), and our ONNX path (onnxruntime backbone + torch head) / our torch path.
Timings interleave the contenders round by round so that machine noise
hits them alike; each number is the median over rounds. Missing optional libraries are reported,
not faked (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from audit.cam import GradCAM, PredictedClass
from audit.cam.onnx import OnnxModel
from audit.models import build_torchvision

LAYERS = {"resnet50": "layer4", "densenet121": "features", "resnet18": "layer4"}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _onnx_twin(model: torch.nn.Module, x: torch.Tensor) -> OnnxModel:
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    torch.onnx.export(
        model,
        (x[:1],),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return OnnxModel(path)


def contenders(
    model: torch.nn.Module, layer: str, x: torch.Tensor, with_onnx: bool = True
) -> dict[str, Callable[[], object]]:
    module = dict(model.named_modules())[layer]
    with torch.no_grad():
        idx = model(x).argmax(dim=1).tolist()
    out: dict[str, Callable[[], object]] = {}

    def plain() -> object:
        with torch.inference_mode():
            return model(x)

    ours = GradCAM(model, layer)
    out["plain inference"] = plain
    out["ours (Grad-CAM)"] = lambda: ours(x, PredictedClass()).maps
    if with_onnx and x.device.type == "cpu":  # the ONNX path runs through onnxruntime's CPU provider
        onnx_cam = GradCAM(_onnx_twin(model, x), layer)
        out["ours, ONNX file"] = lambda: onnx_cam(x, PredictedClass()).maps
    try:
        from torchcam.methods import GradCAM as TorchcamGradCAM

        def torchcam() -> object:
            with TorchcamGradCAM(model, layer, input_shape=tuple(x.shape[1:])) as extractor:
                return extractor(idx, model(x), normalized=False)

        out["torchcam"] = torchcam
    except ImportError:
        print("torchcam not installed: skipped")
    try:
        from pytorch_grad_cam import GradCAM as PGCGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        pgc = PGCGradCAM(model=model, target_layers=[module])
        targets = [ClassifierOutputTarget(i) for i in idx]
        out["pytorch-grad-cam"] = lambda: pgc(input_tensor=x, targets=targets)
    except ImportError:
        print("pytorch-grad-cam (package grad-cam) not installed: skipped")
    return out


def measure(fns: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--archs", nargs="+", default=["resnet50", "densenet121"])
    parser.add_argument("--skip-onnx", action="store_true", help="leave out the ONNX path")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"batch {args.batch}, {args.size}px, median of {args.repeats} interleaved rounds"
    )
    for arch in args.archs:
        torch.manual_seed(0)
        model = build_torchvision(arch, 1000).eval().to(args.device)
        x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
        t = measure(contenders(model, LAYERS[arch], x, not args.skip_onnx), args.repeats, args.device)
        ours = t["ours (Grad-CAM)"]
        print(f"\n{arch} (layer {LAYERS[arch]})")
        for name, sec in t.items():
            print(f"  {name:<22} {sec * 1000:9.1f} ms")
        print(f"  ours / plain inference      = {ours / t['plain inference']:.2f}   (target <= 1.15)")
        if "pytorch-grad-cam" in t:
            print(f"  pytorch-grad-cam / ours     = {t['pytorch-grad-cam'] / ours:.2f}   (target >= 3)")
        if "torchcam" in t:
            print(f"  torchcam / ours             = {t['torchcam'] / ours:.2f}   (target >= 1.5)")
        if "ours, ONNX file" in t:
            print(f"  ONNX path / torch path      = {t['ours, ONNX file'] / ours:.2f}")


if __name__ == "__main__":
    main()

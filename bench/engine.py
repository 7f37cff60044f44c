"""Grad-CAM speed, measured side by side in one run on the same inputs; prints ratios, not claims.

    .venv/bin/python bench/engine.py [--device cuda] [--repeats 7] [--networks resnet50 densenet121 ...]

Each network starts as a torch checkpoint (seeded weights saved to a temporary folder) and is loaded
the way an audit loads it, including the backend choice (``explain.backend: auto``: exported once to
ONNX, checked against torch on a probe batch; see ``audit/backend.py``). Contenders, timed on the same
batch:

- ``onnxruntime plain``: the reference. onnxruntime's plain inference of the same exported file, with
  as many threads as torch and otherwise its default options;
- ``torch plain``: torch eager inference (``inference_mode``);
- ``ours (default)``: Grad-CAM as an audit runs it (the backend ``auto`` chose);
- ``ours, torch``: Grad-CAM on torch eager (``explain.backend: torch``);
- ``torchcam`` and ``pytorch-grad-cam`` where installed (``pip install -e '.[bench]'``).

Every ratio is against onnxruntime's plain inference (target for ``ours (default)``: <= 1.15). Each
network's floor is printed beside it: the gradient must pass back through every layer after the
explained one, so Grad-CAM does at least 1 + their share of the network's multiply-adds (a floor in
arithmetic; in time only where both passes run their operations equally fast).
Timings interleave the contenders round by round so that machine noise hits them alike; each time is
the median over rounds, and each ratio the median of the per-round ratios, with their range.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
import torch

from audit import backend
from audit.cam import GradCAM, PredictedClass
from audit.cam.onnx import OnnxModel
from audit.config import Explain, ModelSource, Preprocessing
from audit.models import build_torchvision, load_model


@dataclass(frozen=True)
class Network:
    arch: str
    layer: str
    size: int
    classes: int
    batch: int


NETWORKS = {
    "resnet50": Network("resnet50", "layer4", 224, 1000, 16),
    "densenet121": Network("densenet121", "features", 224, 1000, 16),
    "efficientnet_b0": Network("efficientnet_b0", "features", 224, 1000, 16),
    # the demo's network as the demo explains it: 128 px, layer features.8, batch 32
    "demo": Network("mobilenet_v3_small", "features.8", 128, 2, 32),
}
REFERENCE = "onnxruntime plain"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _source(net: Network, folder: Path) -> tuple[ModelSource, Preprocessing]:
    src = ModelSource(kind="torchvision", arch=net.arch, checkpoint=folder / f"{net.arch}.pt", num_classes=net.classes)
    return src, Preprocessing(size=(net.size, net.size))


def loaded(net: Network, folder: Path, device: str, batch: int) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """(torch model, the model an audit explains with, why that one), starting from a checkpoint."""
    torch.manual_seed(0)
    checkpoint = folder / f"{net.arch}.pt"
    torch.save(build_torchvision(net.arch, net.classes).state_dict(), checkpoint)
    src, pre = _source(net, folder)
    explain = Explain(target_layer=net.layer, batch_size=batch, device=device)
    model = load_model(src, device)
    start = time.perf_counter()
    runner, choice = backend.choose(model, src, pre, explain, lambda m: GradCAM(m, net.layer), folder / "onnx")
    print(f"  backend: {choice.backend} ({choice.reason}; export and check {time.perf_counter() - start:.1f} s)")
    return model, runner, choice.backend


def head_share(model: torch.nn.Module, layer: str, size: int) -> float:
    """Share of the network's multiply-adds (convolutions and linear layers) that run after ``layer``.

    Grad-CAM needs the class score's gradient at ``layer``, so its backward passes through every one of
    them, and the input gradient of a convolution or linear layer takes as many multiply-adds as its
    forward: Grad-CAM does at least (1 + this share) x the multiply-adds of plain inference. A floor in
    arithmetic, not in time (a runtime may run one pass's operations faster than another's). "After"
    is execution order, which is the gradient's path for the whole sequential stages explained here
    (``layer4``, ``features``, ``features.8``); for a layer inside a block with a skip branch, the
    branch would be counted too. The model is counted on a copy, on CPU, for one image."""
    macs, after = {"before": 0, "after": 0}, [False]

    def count(module: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        per_output = 0
        if isinstance(module, torch.nn.Conv2d):
            per_output = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        elif isinstance(module, torch.nn.Linear):
            per_output = module.in_features
        macs["after" if after[0] else "before"] += per_output * out.numel()  # one image: numel is per image

    def passed(*_: object) -> None:
        after[0] = True

    modules = dict(copy.deepcopy(model).cpu().named_modules())
    hooks = [
        m.register_forward_hook(count) for m in modules.values() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    hooks.append(modules[layer].register_forward_hook(passed))
    try:
        with torch.no_grad():
            modules[""](torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return macs["after"] / (macs["before"] + macs["after"])


def reference_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def contenders(
    model: torch.nn.Module, runner: torch.nn.Module, layer: str, x: torch.Tensor, onnx_file: Path | None
) -> dict[str, Callable[[], object]]:
    with torch.no_grad():
        idx = model(x).argmax(dim=1).tolist()
    out: dict[str, Callable[[], object]] = {}
    if onnx_file is not None:
        session, feed = reference_session(onnx_file), {"input": x.cpu().numpy()}
        out[REFERENCE] = lambda: session.run(None, feed)

    def plain() -> object:
        with torch.inference_mode():
            return model(x)

    out["torch plain"] = plain
    ours, ours_torch = GradCAM(runner, layer), GradCAM(model, layer)
    out["ours (default)"] = lambda: ours(x, PredictedClass()).maps
    if runner is not model:
        out["ours, torch"] = lambda: ours_torch(x, PredictedClass()).maps
    try:
        from torchcam.methods import GradCAM as TorchcamGradCAM

        def torchcam() -> object:
            with TorchcamGradCAM(model, layer, input_shape=tuple(x.shape[1:])) as extractor:
                return extractor(idx, model(x), normalized=False)

        out["torchcam"] = torchcam
    except ImportError:
        pass
    try:
        from pytorch_grad_cam import GradCAM as PGCGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        pgc = PGCGradCAM(model=model, target_layers=[dict(model.named_modules())[layer]])
        targets = [ClassifierOutputTarget(i) for i in idx]
        out["pytorch-grad-cam"] = lambda: pgc(input_tensor=x, targets=targets)
    except ImportError:
        pass
    return out


def measure(fns: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up (sessions, allocators, heads)
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def report(name: str, net: Network, times: dict[str, list[float]]) -> dict[str, float]:
    base = REFERENCE if REFERENCE in times else "torch plain"
    print(f"\n{name}: {net.arch} at {net.size} px, layer {net.layer}, batch {net.batch}")
    print(f"  {'contender':<20} {'median ms':>10}   {'/ ' + base:>24}  (range over rounds)")
    ratios = {}
    for contender, ts in times.items():
        per_round = [t / b for t, b in zip(ts, times[base], strict=True)]
        ratios[contender] = statistics.median(per_round)
        print(
            f"  {contender:<20} {statistics.median(ts) * 1000:10.1f}   {ratios[contender]:24.2f}"
            f"  ({min(per_round):.2f}-{max(per_round):.2f})"
        )
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--batch", type=int, default=None, help="one batch size for every network")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, device {args.device}, "
        f"threads {torch.get_num_threads()}, median of {args.repeats} interleaved rounds"
    )
    summary = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.networks:
            net = NETWORKS[name]
            batch = args.batch or net.batch
            print(f"\n{name}:")
            model, runner, _ = loaded(net, Path(tmp), args.device, batch)
            onnx_file = runner.path if isinstance(runner, OnnxModel) else None
            if onnx_file is None and args.device == "cpu":  # the reference exists even when torch was chosen
                onnx_file = backend.exported(model, *_source(net, Path(tmp)), Path(tmp) / "onnx")[0]
            x = torch.randn(batch, 3, net.size, net.size, generator=torch.Generator().manual_seed(1))
            x = x.to(args.device)
            share = head_share(model, net.layer, net.size)
            times = measure(contenders(model, runner, net.layer, x, onnx_file), args.repeats, args.device)
            summary[name] = (report(name, net, times), share)
    base = REFERENCE if args.device == "cpu" else "torch plain inference"
    print(f"\nGrad-CAM as an audit runs it / {base} (target <= 1.15), and its floor in arithmetic: Grad-CAM")
    print("does at least 1 + the share of multiply-adds after the explained layer (the gradient passes them)")
    for name, (ratios, share) in summary.items():
        ours = ratios["ours (default)"]
        print(f"  {name:<16} {ours:.2f}   floor {1 + share:.2f} ({share:.1%} of the multiply-adds after the layer)")


if __name__ == "__main__":
    main()

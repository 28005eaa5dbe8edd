"""How long the first model load takes in a fresh interpreter: imports, then load + first predict.

Each figure is a new Python process (what a worker, a job or the CLI pays once), on one thread:
``import`` is ``from workers.anomaly import load_model, predict`` (torch, cv2 and the engine's
modules; anomalib comes later, if the backend needs it), ``load + predict`` is ``load_model`` and
the first ``predict`` of one image, with the process's resident memory after each stage and its
peak (``/proc/self/status``: what a worker or a station needs to run the model). The heaviest
imports are listed from ``-X importtime`` (self
time summed per top-level package), with what the process imported that it should not need.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/anomaly_load.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/anomaly_load.py --model DIR --image IMG

Without ``--model``, PaDiM is trained at 256 px on ``--train-images`` normal images of
``--dataset`` (MVTec layout) in a temporary folder, exported to ONNX, and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, sys, time
def rss(field):  # MB, from /proc (Linux): VmRSS now, VmHWM the peak so far
    line = [l for l in open("/proc/self/status") if l.startswith(field)][0]
    return int(line.split()[1]) / 1024
started = time.perf_counter()
import torch
torch.set_num_threads(1)
from workers.anomaly import load_model, predict
imported = time.perf_counter()
import_mb = rss("VmRSS")
model = load_model(sys.argv[1], device="cpu", backend=sys.argv[2])
loaded = time.perf_counter()
load_mb, load_peak_mb = rss("VmRSS"), rss("VmHWM")
pred = predict(model, sys.argv[3])
done = time.perf_counter()
print(json.dumps({
    "import_s": imported - started, "load_s": loaded - imported, "predict_s": done - loaded,
    "import_mb": import_mb, "load_mb": load_mb, "load_peak_mb": load_peak_mb,
    "predict_mb": rss("VmRSS"), "peak_mb": rss("VmHWM"),
    "backend": model.backend, "score": pred.image_score,
    "modules": len(sys.modules),
    "heavy": sorted({m.split(".")[0] for m in sys.modules} & {
        "anomalib", "lightning", "torchmetrics", "torchvision", "timm", "scipy", "onnx",
        "openvino", "onnxruntime", "sklearn", "matplotlib", "pandas"}),
}))
"""

#: Packages loading a model for inference never needs, whatever the backend (``onnx`` only
#: writes exports; reading one is the runtime's job).
NEEDLESS = {"lightning", "torchmetrics", "matplotlib", "pandas", "sklearn", "onnx"}


def child(model: Path, backend: str, image: Path, importtime: bool = False) -> tuple[dict, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    flags = ["-X", "importtime"] if importtime else []
    done = subprocess.run(
        [sys.executable, *flags, "-c", CHILD, str(model), backend, str(image)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{backend}: the child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def heaviest(importtime_log: str, n: int = 8) -> list[tuple[str, float]]:
    """Self import time in seconds summed per top-level package, largest first."""
    per_package: Counter[str] = Counter()
    for line in importtime_log.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            per_package[m.group(2).split(".")[0]] += int(m.group(1))
    return [(name, us / 1e6) for name, us in per_package.most_common(n)]


def prepare(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path]:
    """A PaDiM model trained on a few normal images, with its ONNX export, and a test image."""
    import torch

    from workers.anomaly import TrainConfig, export_onnx, mvtec_test, mvtec_train, train

    torch.set_num_threads(1)
    dataset = Path(args.dataset)
    normals = mvtec_train(dataset)[: args.train_images]
    result = train(TrainConfig(model="padim", input_size=256), normals, tmp / "padim")
    export_onnx(result.artifact_path)
    image = next(s.image for s in mvtec_test(dataset) if s.mask is not None)
    return result.artifact_path.parent, image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a trained model folder (default: train PaDiM)")
    parser.add_argument("--image", help="the image to predict (with --model)")
    parser.add_argument(
        "--dataset", default=str(ROOT.parent / "shared" / "datasets" / "mvtec_bottle")
    )
    parser.add_argument("--train-images", type=int, default=16)
    parser.add_argument("--backends", nargs="+", default=["torch", "auto"])
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per backend")
    args = parser.parse_args()
    if bool(args.model) != bool(args.image):
        parser.error("--model and --image go together")
    with tempfile.TemporaryDirectory(prefix="loupe-load-bench-") as tmp:
        if args.model:
            model, image = Path(args.model), Path(args.image)
        else:
            model, image = prepare(args, Path(tmp))
        for backend in args.backends:
            child(model, backend, image)  # warm the page cache: every file read once before
            runs = [child(model, backend, image)[0] for _ in range(args.repeat)]
            last, log = child(model, backend, image, importtime=True)
            imp = statistics.median(r["import_s"] for r in runs)
            load = statistics.median(r["load_s"] + r["predict_s"] for r in runs)
            print(
                f"{backend} ({last['backend']}): import {imp:.2f} s, load + first predict "
                f"{load:.2f} s, total {imp + load:.2f} s (median of {len(runs)} fresh processes; "
                f"each: "
                + ", ".join(f"{r['import_s'] + r['load_s'] + r['predict_s']:.2f}" for r in runs)
                + ")"
            )
            print(
                f"  resident memory, MB: {last['import_mb']:.0f} after the imports, "
                f"{last['load_mb']:.0f} after the load (peak {last['load_peak_mb']:.0f}), "
                f"{last['predict_mb']:.0f} after the first predict (peak {last['peak_mb']:.0f})"
            )
            print(f"  {last['modules']} modules; of the heavy ones: {', '.join(last['heavy'])}")
            needless = sorted(NEEDLESS & set(last["heavy"]))
            if needless:
                print(f"  imported but not needed for inference: {', '.join(needless)}")
            top = ", ".join(f"{name} {s:.2f}" for name, s in heaviest(log))
            print(f"  import time by package (s, -X importtime, one run): {top}")


if __name__ == "__main__":
    main()

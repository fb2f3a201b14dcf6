"""Python onnxruntime + Pillow on the same image model, threads and photos as
`vitrine-embedbench --images`: decode, EXIF orientation, RGB, bilinear
shortest-edge resize, centre crop, normalise (scripts/test_vit_reference.py's
`preprocess`, which follows preprocess.json), then the model at batches of 1,
8 and 32. Prints one JSON line per stage and batch size."""
import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
from test_vit_reference import load_settings, preprocess  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch", default="1,8,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-dir", default=".cache/models/test-vit")
    a = ap.parse_args()
    s = load_settings(a.model_dir)
    paths = sorted(
        os.path.join(a.images, f) for f in os.listdir(a.images) if f.lower().endswith((".jpg", ".jpeg", ".png", ".webp"))
    )[: a.n]
    t0 = time.perf_counter()
    pixels = np.stack([preprocess(p, s) for p in paths])
    pre_ms = (time.perf_counter() - t0) * 1e3 / len(paths)
    print(json.dumps({"engine": "python (Pillow)", "stage": "preprocess", "n": len(paths), "ms_per_image": round(pre_ms, 3)}))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(os.path.join(a.model_dir, "model.onnx"), opts, providers=["CPUExecutionProvider"])
    name = s["input_name"]
    sess.run([s["output_name"]], {name: pixels[:8]})  # warm-up
    for bs in [int(b) for b in a.batch.split(",")]:
        lat = []
        t0 = time.perf_counter()
        for i in range(0, len(pixels), bs):
            t = time.perf_counter()
            sess.run([s["output_name"]], {name: pixels[i : i + bs]})
            lat.append((time.perf_counter() - t) * 1e3)
        secs = time.perf_counter() - t0
        print(json.dumps({
            "engine": "python (onnxruntime)", "stage": "model", "batch": bs, "threads": a.threads, "n": len(pixels),
            "per_s": round(len(pixels) / secs, 1), "batch_p50_ms": round(float(np.median(lat)), 2),
        }))


if __name__ == "__main__":
    main()

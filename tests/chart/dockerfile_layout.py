"""Reads the repository's Dockerfile: its stages, and what the runtime stage
puts where (COPY --from=builder sources -> image paths, ENV defaults).

Standard library only: tests/python/test_image_layout.py imports it from its
own virtualenv to lay out the runtime stage's files from a local build.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"

# Builder-stage paths and where the same files are in a local checkout.
BUILDER_BIN = "/build/bin/"          # copied there from target/release/
BUILDER_MODELS = "/src/.cache/models/"  # written by scripts/fetch-models.sh


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def instructions(text: str) -> list[tuple[str, str]]:
    """(OPERATION, arguments) with continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        op, _, rest = buf.strip().partition(" ")
        out.append((op.upper(), rest.strip()))
        buf = ""
    return out


def stages(text: str | None = None) -> list[Stage]:
    text = DOCKERFILE.read_text() if text is None else text
    result: list[Stage] = []
    for op, arg in instructions(text):
        if op == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", arg, re.IGNORECASE)
            assert m, f"unparsed FROM {arg!r}"
            result.append(Stage(base=m.group(1), name=m.group(2) or ""))
        elif result:
            result[-1].instructions.append((op, arg))
    return result


def runtime_stage(text: str | None = None) -> Stage:
    return stages(text)[-1]


def env_defaults(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for arg in stage.all("ENV"):
        for word in shlex.split(arg):
            key, eq, value = word.partition("=")
            assert eq, f"ENV must use KEY=value form: {arg!r}"
            env[key] = value
    return env


def copies_from_builder(stage: Stage) -> list[tuple[str, str]]:
    """(builder source, image destination) for each COPY --from=builder source."""
    pairs = []
    for arg in stage.all("COPY"):
        words = shlex.split(arg)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        if "--from=builder" not in flags:
            continue
        *sources, dest = paths
        for src in sources:
            pairs.append((src, dest))
    return pairs


def local_source(src: str, bin_dir: Path) -> Path:
    """Where a builder-stage path's content is in a local checkout."""
    if src.startswith(BUILDER_BIN):
        return bin_dir / src[len(BUILDER_BIN):]
    if src.startswith(BUILDER_MODELS):
        return REPO_ROOT / ".cache" / "models" / src[len(BUILDER_MODELS):]
    raise ValueError(f"no local equivalent known for builder path {src!r}; update dockerfile_layout.py")


def image_files(stage: Stage, bin_dir: Path) -> list[tuple[Path, str]]:
    """(local file or directory, path in the image) for the runtime stage."""
    out = []
    for src, dest in copies_from_builder(stage):
        local = local_source(src, bin_dir)
        if dest.endswith("/") and not src.endswith("/"):
            dest = dest + Path(src).name
        out.append((local, dest.rstrip("/") or "/"))
    return out

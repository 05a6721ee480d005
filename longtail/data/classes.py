"""Matching a second split's classes to the training classes by name.

A test (or validation) split is read on its own: a folder lists only the class folders it
has, so its own label k need not be training label k. Every place that reads a second split
re-indexes its labels by the training class names here; a training class without images in
that split is absent there (n/a in the metrics), a class unknown to training is an error.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np

from longtail.errors import DataError

_GENERATED = re.compile(r"class_\d+")  # names made up for integer labels (list / CSV / HF files)


def align_labels(labels: np.ndarray, names: Sequence[str], train_names: Sequence[str], where: str) -> np.ndarray:
    """`labels` (indices into `names`) as indices into `train_names`, matched by class name.

    Names generated for integer labels (`class_<i>`) carry no meaning: such labels are kept as
    they are (checked against the number of training classes). One-line DataError for a class
    that has samples here but is not a training class; one warning naming the training classes
    without samples here (they are left out of every class mean)."""
    labels = np.asarray(labels, dtype=np.int64)
    names, train_names = [str(n) for n in names], [str(n) for n in train_names]
    used = np.unique(labels)
    if names != train_names:
        index = {name: i for i, name in enumerate(train_names)}
        unknown = [names[c] for c in used if names[c] not in index]
        if unknown and all(_GENERATED.fullmatch(names[c]) for c in used):
            if used.size and used.max() >= len(train_names):
                raise DataError(f"{where}: label {int(used.max())} out of range for {len(train_names)} training classes")
        elif unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise DataError(f"{where}: class '{unknown[0]}'{more} is not one of the {len(train_names)} "
                            f"training classes")
        else:
            mapping = np.array([index.get(name, -1) for name in names], dtype=np.int64)
            labels = mapping[labels]
    missing = np.setdiff1d(np.arange(len(train_names)), labels)
    if missing.size:
        more = f" and {missing.size - 1} more" if missing.size > 1 else ""
        warnings.warn(f"{where}: {missing.size} of {len(train_names)} training classes have no images here "
                      f"('{train_names[missing[0]]}'{more}); they are n/a in the metrics", stacklevel=2)
    return labels

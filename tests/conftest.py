"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests use tiny tensors: extra intra-op threads only spin-wait on a small shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def interrupt_forward(monkeypatch, backbone, on_call: int = 3):
    """Make `backbone.forward_features` raise KeyboardInterrupt on its `on_call`-th call (as a
    user's Ctrl-C mid-extraction); returns (the batch sizes it saw, the real forward)."""
    real, calls = backbone.forward_features, []

    def forward(pixels):
        calls.append(pixels.shape[0])
        if len(calls) == on_call:
            raise KeyboardInterrupt
        return real(pixels)

    monkeypatch.setattr(backbone, "forward_features", forward)
    return calls, real


def pytest_collection_modifyitems(config, items):
    """Run the long end-to-end tests (marked `slow`, and the docs walk-throughs) first, so that
    pytest-xdist's two workers finish together instead of one waiting on a late long test."""
    def is_long(item) -> bool:
        return item.get_closest_marker("slow") is not None or item.module.__name__.endswith("test_docs_commands")

    items.sort(key=lambda item: not is_long(item))  # stable: the order within each group is kept


def write_random_images(root, counts: dict[str, int], sizes: tuple[int, int], seed: int):
    """root/<class>/<i>.png: `counts[class]` random-noise RGB images of random height and width
    in [sizes[0], sizes[1]) (an image folder the tests extract features from)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        (root / name).mkdir()
        for i in range(count):
            h, w = rng.integers(*sizes, size=2)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root

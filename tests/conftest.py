"""Shared test settings."""

import gc
from pathlib import Path

import pytest


def pytest_sessionstart(session):
    """torch, and after collection the test modules, live to the end of the session: frozen out
    of the garbage collector's full passes, which otherwise walk them every time (~0.2 s a pass,
    ~25 passes a worker: 5 % of the suite). Objects the tests make are collected as before.
    pytest-xdist's controller runs no test: it starts the workers without importing torch."""
    if not hasattr(session.config, "workerinput") and session.config.getoption("numprocesses", None):
        return
    import torch  # noqa: F401

    gc.freeze()


def pytest_collection_finish(session):
    gc.freeze()  # everything collection imported (transformers, sklearn, the test modules)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests use tiny tensors: extra intra-op threads only spin-wait on a small shared CPU."""
    import torch

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


# ------------------------------------------------------------------ shared finished tiny runs

TINY_FIT_DATA = ["data_options.num_classes=4", "data_options.n_max=16", "data_options.imbalance_ratio=4",
                 "data_options.test_per_class=8", "data_options.size=16", "backbone_options.image_size=16",
                 "backbone_options.patch_size=8", "batch_size=8", "epochs=2", "lr=0.01", "device=cpu",
                 "progress=false"]


def _build_tiny_runs(root):
    """Two CLI fit runs (LIFT on tiny CLIP, seeds 0 and 1, 2 epochs, test-time ensembling on;
    ft1 with --no-report: no test reads its page, and ft0's is the fit page they read), a greedy
    soup of them (3 held-out images per class, evaluated) and a MonoSoup of ft0 with the
    zero-shot weights (evaluated): what the report, soup and fit-CLI tests read."""
    import contextlib
    import io
    import json

    from longtail.cli import main

    info = {}
    for seed in (0, 1):
        args = ["fit", "-d", "synthetic_images", "-b", "tiny_clip", "-m", "lift", "--out", str(root / f"ft{seed}"),
                "--json", *(["--no-report"] if seed else []), f"seed={seed}", "tte=true", f"root={root / 'data'}",
                *TINY_FIT_DATA]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(args) == 0, args
        info[f"ft{seed}"] = {"args": args, "summary": json.loads(out.getvalue().strip().splitlines()[-1])}
    ft = [str(root / "ft0"), str(root / "ft1")]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["soup", "-m", "greedy", *ft, "--val-per-class", "3", "--eval", "--device", "cpu",
                     "--out", str(root / "soup")]) == 0
        assert main(["monosoup", "--w1", ft[0], "--w0", "zero-shot", "--eval", "--device", "cpu",
                     "--out", str(root / "mono")]) == 0
    (root / "info.json").write_text(json.dumps(info))


def build_once(tmp_path_factory, worker_id: str, name: str, build) -> Path:
    """The folder `name` filled by `build(folder)` once per test session, for fixtures whose
    runs the tests only read: under pytest-xdist the first worker to ask builds it in the
    session's shared temp folder and the others wait for it (a module-scoped fixture would be
    built again each time work-stealing splits its module across the workers)."""
    import shutil

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base if worker_id == "master" else base.parent) / name
    with FileLock(str(root) + ".lock"):
        if not (root / ".built").is_file():
            if root.exists():  # a build that failed half-way in another worker
                shutil.rmtree(root)
            root.mkdir()
            build(root)
            (root / ".built").touch()
    return root


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, worker_id):
    """Finished tiny runs shared by the whole session, read-only (a test that changes one copies
    it first, e.g. with `copy_runs`): {"root": folder, "ft0"/"ft1": {"args": the fit command,
    "summary": what --json printed}}; folders root/ft0, root/ft1 (fit), root/soup (greedy
    soup), root/mono (MonoSoup). Built once per session (`build_once`)."""
    import json

    root = build_once(tmp_path_factory, worker_id, "tiny_runs", _build_tiny_runs)
    return {"root": root, **json.loads((root / "info.json").read_text())}


def copy_runs(tiny_runs, dest, *names):
    """Copy the named shared runs into `dest` (side by side, so relative links keep working)."""
    import shutil

    for name in names:
        shutil.copytree(tiny_runs["root"] / name, dest / name)
    return [dest / name for name in names]


# ------------------------------------------------------------------ torchrun-style workers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a process group's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_worker(rank: int, env: dict[str, str], log: str, target, args: tuple) -> None:
    """One forked worker: its own log file (stdout and stderr), torchrun's variables for `rank`,
    warnings ignored, and no accelerate state inherited from the test's process."""
    import os
    import sys
    import warnings

    sys.stdout = sys.stderr = open(log, "w", buffering=1)  # noqa: SIM115 (the process ends with it)
    os.dup2(sys.stderr.fileno(), 1)
    os.dup2(sys.stderr.fileno(), 2)
    warnings.simplefilter("ignore")
    os.environ.update({**env, "RANK": str(rank), "LOCAL_RANK": str(rank)})
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # as accelerate's own tests do between runs
    target(*args)


def run_torchrun_workers(target, args: tuple, logs: list, timeout: float = 300) -> list[str]:
    """Run `target(*args)` in len(logs) processes that see the environment torchrun gives its
    workers (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR / MASTER_PORT) and form
    a real gloo group over TCP; returns each worker's log. They are forked from the test's
    process, as accelerate's `notebook_launcher` starts CPU processes: a new interpreter each
    would spend ~10 s importing torch, transformers and scikit-learn again and check nothing
    longtail does. Fails with the logs' tails when a worker fails or hangs."""
    import multiprocessing

    world = str(len(logs))
    env = {"WORLD_SIZE": world, "LOCAL_WORLD_SIZE": world, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    fork = multiprocessing.get_context("fork")
    workers = [fork.Process(target=_torchrun_worker, args=(r, env, str(log), target, args)) for r, log in enumerate(logs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=timeout)
        if w.exitcode is None:
            w.kill()
            w.join()
    texts = [log.read_text() for log in logs]
    assert [w.exitcode for w in workers] == [0] * len(logs), "\n".join(text[-3000:] for text in texts)
    return texts

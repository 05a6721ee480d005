"""One configuration grammar on every command: KEY=VALUE overrides, and a typo in any name or
value fails with one line (exit 2) before any data, feature file or model is touched.

The data paths below do not exist: a command that looked at them first would report a
missing file instead of the config problem, so each check is timer-free.
"""

from __future__ import annotations

import pytest

from longtail import cli

MISSING = "/nonexistent/longtail-test"


def _error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    assert "not found" not in err and MISSING not in err, err  # the data was never looked at
    return err


CASES = [
    # command line, part of the expected message
    (["probe", "--train", f"{MISSING}/a.npz", "--test", f"{MISSING}/b.npz", "method=linearr"],
     "unknown probe method 'linearr'; choose from:"),
    (["probe", "--train", f"{MISSING}/a.npz", "--test", f"{MISSING}/b.npz", "--loss", "laa"],
     "unknown loss 'laa'; choose from:"),
    (["probe", "--train", f"{MISSING}/a.npz", "--test", f"{MISSING}/b.npz", "lr=abc"],
     "lr='abc': expected a number"),
    (["probe", "--train", f"{MISSING}/a.npz", "--test", f"{MISSING}/b.npz", "loss=la", "loss_options.taus=2"],
     "taus"),
    (["stats", MISSING, "many=lots"], "many='lots': expected an integer"),
    (["stats", MISSING, "--many", "5", "--few", "10"], "few (10) must not exceed many (5)"),
    (["features", "--data", MISSING, "--backbone", "tiny_clip", "--out", "x.npz", "templates=liftt"],
     "unknown template set 'liftt'"),
    (["features", "--data", MISSING, "--backbone", "tiny_clip", "--out", "x.npz", "batch_size=0"],
     "batch_size must be >= 1"),
    (["features", "--data", MISSING, "--backbone", "tiny_clip", "--out", "x.npz", "bogus=1"],
     "unknown config key 'bogus'; valid keys: data, backbone, out"),
    (["fit", "-d", "synthetic_images", "-b", "tiny_clip", "-m", "lift", f"root={MISSING}", "optimizer=sgdd"],
     "unknown optimizer 'sgdd'; choose from: adamw, sgd"),
    (["fit", "-d", "synthetic_images", "-b", "tiny_clip", "-m", "lift", f"root={MISSING}", "adapter=adaptformerr"],
     "unknown adapter 'adaptformerr'"),
    (["fit", "-d", "synthetic_images", "-b", "tiny_clip", "-m", "liftt"], "unknown method preset 'liftt'"),
    (["fit", "-d", "cifar100_ir100", "-b", "tiny_clip", "-m", "lift", f"root={MISSING}", "loss=laa"],
     "unknown loss 'laa'"),
    (["lt-soups", "-d", "cifar100_ir100", "-b", "tiny_clip", "--out", f"{MISSING}/lts", f"root={MISSING}",
      "merge=recursivee"], "merge"),
    (["soup", "-m", "uniformm", f"{MISSING}/a", f"{MISSING}/b"], "unknown soup method 'uniformm'"),
    (["monosoup", "--w1", f"{MISSING}/a", "--w0", f"{MISSING}/b", "mode=energyy"], "energyy"),
    (["demo", "--out", f"{MISSING}/demo", "num_clases=3"], "unknown option 'num_clases'"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a[:1] + a[-1:]) for a, _ in CASES])
def test_a_config_typo_fails_before_any_data_is_read(argv, message, capsys):
    assert message in _error(capsys, argv)


def test_flags_and_key_value_pairs_are_one_grammar(tmp_path, capsys):
    """`--option ir=...` is sugar for `data_options.ir=...`; KEY=VALUE pairs win over flags."""
    assert cli.main(["stats", "synthetic_images", "--no-plot", "--json", "--option", "imbalance_ratio=10",
                     "data_options.n_max=40", "--many", "5", "many=30"]) == 0
    out = capsys.readouterr().out
    import json

    stats = json.loads(out)
    assert stats["n_max"] == 40 and stats["imbalance_ratio"] == pytest.approx(10, rel=0.05)
    assert stats["many_threshold"] == 30


def test_list_prints_every_registry(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for kind, names in {"losses": ("la", "ccar-la"), "probe-methods": ("vmf-kde", "zero-shot"),
                        "adapters": ("adaptformer", "sg-adapter"), "merges": ("recursive", "greedy"),
                        "datasets": ("cifar100_ir100", "synthetic_images"),
                        "backbones": ("tiny_clip", "efficientnet_lite0"),
                        "run-kinds": ("probe", "fit")}.items():
        section = out.split(f"{kind}  (")[1].split("\n\n")[0]
        for name in names:
            assert f"\n  {name} " in section or section.rstrip().endswith(f"  {name}"), (kind, name)
    assert cli.main(["list", "losses"]) == 0
    assert "adapters" not in capsys.readouterr().out


def test_a_process_group_a_command_joined_is_left_when_it_returns(tmp_path, monkeypatch, capsys):
    """torchrun -m longtail fit: accelerate joins a gloo group in the command; the CLI leaves it
    before returning (gloo aborts at exit otherwise), and leaves alone a group its caller had."""
    import torch.distributed as dist

    from longtail.cli import main
    from longtail.commands import list as list_command

    def joins(args):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        return 0

    monkeypatch.setattr(list_command, "run", joins)
    assert main(["list"]) == 0 and not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store2'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(list_command, "run", lambda args: 0)
        assert main(["list"]) == 0 and dist.is_initialized()  # the caller's group stays
    finally:
        dist.destroy_process_group()

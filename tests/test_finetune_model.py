"""Fine-tuning model, FIT loss, presets, augmentation and schedule (tiny CLIP, CPU, fast)."""

from __future__ import annotations

import math

import pytest
import torch

from longtail.errors import ConfigError, DataError
from longtail.methods.finetune import FitConfig, FitLoss, build_config, build_model
from longtail.methods.finetune.augment import CROP_SCHEDULES, five_crops, train_augmentation
from longtail.methods.finetune.optim import eval_points, make_scheduler
from longtail.methods.finetune.presets import METHOD_PRESETS, PER_DATASET
from longtail.methods.losses import make_loss
from longtail.models.backbone import load_backbone

NAMES = ["red square", "green_circle", "blue line", "cat"]
COUNTS = [20, 10, 5, 2]

def tiny_model(method: str = "sage", **overrides):
    cfg = build_config("synthetic_images", "tiny_clip", method, overrides)
    backbone = load_backbone("tiny_clip", image_size=16, patch_size=8, num_layers=2)
    return cfg, build_model(cfg, backbone, NAMES)


def perturb_adapter(model, seed: int = 1) -> None:
    """Give every adapter weight a random value so that no gradient vanishes by W_up = 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.handle.named_trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def pixels(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_step0_identities_sage():
    """docs/methods.md §5.9 at step 0: adapted == frozen encoder; z = z_v = z_t; Loss = (1+l1+l2+l3) l_CF(z); z_hat = z."""
    cfg, model = tiny_model("sage")
    x = pixels()
    model.eval()
    out = model(x)
    f = model.features(x)
    f_zs = model.zero_shot_features(x)
    torch.testing.assert_close(f, f_zs, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["z"], out["z_v"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["z"], out["z_t"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["z_hat"], out["z"], rtol=0, atol=0)
    base = make_loss("cf", COUNTS, **cfg.loss_options)
    y = torch.tensor([0, 2, 3])
    loss = FitLoss(base, (cfg.lambda1, cfg.lambda2, cfg.lambda3))(out, y)
    expected = (1 + cfg.lambda1 + cfg.lambda2 + cfg.lambda3) * base(out["z"], y)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    # the head starts from the 60-template text embeddings (W = W_zs), with unit rows
    torch.testing.assert_close(model.head.weight, model.w_zs)
    torch.testing.assert_close(model.head.weight.norm(dim=1), torch.ones(4), rtol=1e-5, atol=1e-5)
    assert cfg.templates == "sage60" and model.head.scale == 25.0


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    adapter = [p.grad for _, p in model.handle.named_trainable_parameters()]
    adapter_norm = sum(0.0 if g is None else float(g.abs().sum()) for g in adapter)
    head = model.head.weight.grad
    s = [0.0 if p.grad is None else float(p.grad.abs()) for p in (model.s1, model.s2)]
    return adapter_norm, 0.0 if head is None else float(head.abs().sum()), s


@pytest.mark.parametrize("method, options", [("lift", {"feature_interchange": True, "lambda1": 0.1, "lambda2": 0.1, "lambda3": 0.5}),
                                             ("sage", {"adapter_options.detach_text": True})])
def test_gradient_paths(method, options):
    """l(z_v) reaches only W; l(z_t) only the adapters; s1, s2 only through l(z_hat)."""
    _, model = tiny_model(method, **options)
    perturb_adapter(model)
    with torch.no_grad():
        model.s1.fill_(0.3)
        model.s2.fill_(-0.2)
    x, y = pixels(), torch.tensor([0, 1, 3])
    loss = make_loss("la", COUNTS)
    ad, head, s = _grads(model, loss(model(x)["z_v"], y))
    assert ad == 0.0 and head > 0 and s == [0.0, 0.0]
    ad, head, s = _grads(model, loss(model(x)["z_t"], y))
    assert ad > 0 and head == 0.0 and s == [0.0, 0.0]
    ad, head, s = _grads(model, loss(model(x)["z"], y))
    assert ad > 0 and head > 0 and s == [0.0, 0.0]
    ad, head, s = _grads(model, loss(model(x)["z_hat"], y))
    assert s[0] > 0 and s[1] > 0


def test_sg_adapter_text_vector_carries_gradient_to_head_by_default():
    """Sage default (docs/methods.md §5.2): w_bar is not detached, so l(z_t) reaches W through the adapters."""
    _, model = tiny_model("sage")
    perturb_adapter(model)
    _, head, _ = _grads(model, make_loss("la", COUNTS)(model(pixels())["z_t"], torch.tensor([0, 1, 3])))
    assert head > 0


def test_frozen_zero_shot_pass_is_eval_and_no_grad_for_full_ft():
    cfg, model = tiny_model("full_ft", feature_interchange=True, lambda3=1.0)
    assert model.zero_shot is not None  # in-place method: a frozen copy
    with torch.no_grad():
        for p in model.backbone.parameters():
            if p.requires_grad:
                p.add_(0.05)
    model.train()
    assert not model.zero_shot.training
    out = model(pixels())
    assert not torch.allclose(out["z"], out["z_v"])
    assert all(not p.requires_grad for p in model.zero_shot.parameters())


def test_trainable_state_roundtrip_and_strictness():
    _, model = tiny_model("sage")
    state = model.trainable_state_dict()
    assert {"head.weight", "s1", "s2", "w_zs"} <= set(state)
    assert all("zero_shot" not in k for k in state)
    adapter = sum(p.numel() for p in model.handle.trainable_parameters())
    assert model.num_trainable() == adapter + 4 * 32 + 2
    _, other = tiny_model("sage", seed=5, head_init="random")
    other.load_trainable_state_dict(state)
    torch.testing.assert_close(other(pixels())["z_hat"], model(pixels())["z_hat"])
    state.pop("s1")
    with pytest.raises(Exception, match="missing"):
        other.load_trainable_state_dict(state)


def test_class_mean_init_and_text_refusal():
    cfg = build_config("synthetic_images", "tiny_clip", "lift", {"head_init": "class_mean"})
    backbone = load_backbone("tiny_clip", image_size=16, patch_size=8)
    feats = torch.tensor([[1.0, 0, 0], [3.0, 0, 0], [0, 2.0, 0]]).repeat(1, 11)[:, :32]
    labels = torch.tensor([0, 0, 1])
    model = build_model(cfg, backbone, ["a", "b"], lambda: (feats, labels))
    torch.testing.assert_close(model.head.weight[0], torch.nn.functional.normalize(feats[0], dim=0))
    with pytest.raises(DataError, match="'c' has no training images"):
        build_model(cfg, load_backbone("tiny_clip", image_size=16, patch_size=8), ["a", "b", "c"], lambda: (feats, labels))
    backbone.has_text = False
    with pytest.raises(ConfigError, match="no text tower"):
        build_model(build_config("synthetic_images", "tiny_clip", "lift"), backbone, ["a", "b"])


def test_presets_and_overrides():
    cfg = build_config("cifar100_ir50", "clip_vit_b16", "sage", {"epochs": 1, "lr": 1, "loss_options.mu": 1.0})
    assert (cfg.lambda1, cfg.lambda2, cfg.lambda3) == (0.0001, 0.010, 0.6)
    assert cfg.loss == "cf" and cfg.loss_options == {"gamma": 0.06, "mu": 1.0}
    assert cfg.adapter == "sg-adapter" and cfg.adapter_options == {"alpha": 0.1}
    assert cfg.epochs == 1 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.dataset == "cifar100_ir50" and cfg.decode_size == 32  # a data-layer name, CIFAR's decode size
    assert build_config("cifar100_ir50", "clip_vit_b16", "lift").interpolation == "bilinear"  # LIFT
    assert build_config("cifar100_ir50", "clip_vit_b16", "lift_plus").interpolation == "bicubic"  # LIFT+
    inat = build_config("inat2018", "clip_vit_b16", "sage")
    assert inat.epochs == 20 and inat.adapter_options["alpha"] == 1.0 and inat.lambda3 == 1e-7
    assert build_config("imagenet_lt", "clip_vit_b16", "lift").loss_options == {"tau": 1.0}
    assert set(METHOD_PRESETS.names()) >= {"lift", "lift_plus", "sage", "zero_shot", "linear_probe", "full_ft"}
    assert set(PER_DATASET["sage"]) == {"cifar100_ir100", "cifar100_ir50", "cifar100_ir10", "places_lt", "imagenet_lt", "inat2018"}
    with pytest.raises(ConfigError, match="valid keys: .*epochs"):
        build_config("synthetic_images", "tiny_clip", "lift", {"epoch": 1})
    with pytest.raises(ConfigError, match="divisible"):
        FitConfig(batch_size=10, grad_accum=3)


def _lrs(cfg, steps_per_epoch, total):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    sched = make_scheduler(opt, cfg, steps_per_epoch, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_lr_schedule_per_epoch_per_step_and_warmup():
    lrs = _lrs(FitConfig(epochs=4, lr=1.0), steps_per_epoch=3, total=12)  # LIFT: once per epoch
    assert lrs[:3] == [1.0] * 3 and lrs[3] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lrs[11] == pytest.approx(0.5 * (1 + math.cos(3 * math.pi / 4)))
    warm = _lrs(FitConfig(epochs=2, lr=1.0, warmup_epochs=1.0), steps_per_epoch=4, total=8)
    assert warm[:4] == [0.25, 0.5, 0.75, 1.0]
    # LT-Soups: linear from 1e-6 lr over w steps, then per-step cosine down to 0.1 lr
    lts = _lrs(FitConfig(lr=1.0, schedule_unit="step", warmup_steps=2, final_lr_fraction=0.1), 4, total=6)
    assert lts[0] == pytest.approx(1e-6) and lts[2] == pytest.approx(1.0)
    assert lts[4] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert min(lts[2:]) > 0.1
    assert eval_points(10, 3) == [3, 6, 9] and eval_points(4, 0) == [] and eval_points(2, 5) == [1, 2]


def test_config_names_fail_before_any_data(tmp_path):
    """A typo in any registry name is a one-line error at construction (no data, no backbone)."""
    from longtail.errors import UnknownNameError

    missing = {"root": str(tmp_path / "does-not-exist")}
    for key, bad in [("optimizer", "sgdd"), ("lr_schedule", "cosinee"), ("loss", "laa"), ("adapter", "lora2"),
                     ("head_init", "txt"), ("augment", "rrc"), ("templates", "nope")]:
        with pytest.raises(UnknownNameError, match=bad):
            build_config("synthetic_images", "tiny_clip", "lift", {**missing, key: bad})
    with pytest.raises(ConfigError, match="gama"):
        build_config("synthetic_images", "tiny_clip", "sage", {**missing, "loss_options.gama": 1})
    with pytest.raises(UnknownNameError, match="cifar100_ir100"):
        build_config("cifar100_ir1000", "tiny_clip", "lift")
    with pytest.raises(ConfigError, match="interpolation"):
        FitConfig(interpolation="nearest")
    with pytest.raises(ConfigError, match="val_per_class"):
        FitConfig(n_evals=3)
    assert not (tmp_path / "does-not-exist").exists()


def test_five_crops_positions():
    x = torch.arange(6 * 6, dtype=torch.float32).view(1, 1, 6, 6)
    crops = five_crops(x, 4)
    assert crops.shape == (5, 1, 1, 4, 4)
    assert [float(c[0, 0, 0, 0]) for c in crops] == [0.0, 2.0, 12.0, 14.0, 7.0]


def test_augmentation_shapes_and_crop_schedule():
    assert CROP_SCHEDULES.get("convex")(0.0) == 0.0 and CROP_SCHEDULES.get("convex")(1.0) == 1.0
    assert CROP_SCHEDULES.get("convex")(0.5) == pytest.approx(1 - math.sqrt(0.75))
    aug = train_augmentation("rrc_flip", 16, (0.5,) * 3, (0.25,) * 3, (0.08, 1.0), "linear", epoch=2, epochs=5)
    assert aug.crop._param_generator.scale[0] == pytest.approx(0.08 + 0.5 * 0.92)
    batch = torch.full((2, 20, 20, 3), 255, dtype=torch.uint8)
    out = aug(batch)
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out, torch.full_like(out, 2.0))  # (1 - 0.5) / 0.25
    none = train_augmentation("none", 16, (0.0,) * 3, (1.0,) * 3, (0.08, 1.0))
    assert none(batch).shape == (2, 3, 16, 16)


def test_checkpoints_are_published_atomically(tmp_path):
    from longtail.methods.finetune import checkpoint as ckpt

    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9)
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))},
                             {"optimizer": opt.state_dict(), "rng": ckpt.rng_state(), "step": step})
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-00000002"]
    (tmp_path / "checkpoints" / "step-00000003").mkdir()  # a crash while writing step 3
    weights, state = ckpt.load_checkpoint(tmp_path)
    assert state["step"] == 2 and torch.equal(weights["w"], torch.full((2,), 2.0))
    assert ckpt.load_checkpoint(tmp_path / "elsewhere") is None

"""Behaviour of the adapters on a tiny CLIP vision tower: zero effect at init, math, grads, I/O."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

from longtail.errors import ConfigError, DataError, UnknownNameError
from longtail.models.adapters import ADAPTERS, inject_adapter, lift_bottleneck, make_adapter_config

D, LAYERS, C = 32, 3, 10
ZERO_INIT = ["adaptformer", "sg-adapter", "lora", "ssf", "bitfit", "ln-tuning", "partial", "full", "none"]
TINY = dict(hidden_size=D, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
            image_size=32, patch_size=8)


@pytest.fixture(scope="module")
def backbone() -> CLIPVisionModel:
    torch.manual_seed(0)
    return CLIPVisionModel(CLIPVisionConfig(**TINY)).eval()


@pytest.fixture
def model(backbone) -> CLIPVisionModel:
    return copy.deepcopy(backbone)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def pooled(model, pixels):
    return model(pixel_values=pixels).pooler_output


def randomize_(params, std=0.1, seed=0) -> None:
    """Make every trainable tensor non-trivial (random, away from its init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(std * torch.randn(p.shape, generator=gen))


# ---------- bottleneck rule and config errors ----------

def test_lift_bottleneck_rule():
    assert [lift_bottleneck(c, 12) for c in (100, 365, 1000, 8142)] == [4, 8, 32, 256]
    assert [lift_bottleneck(c, 12) for c in (1, 23, 24, 47, 48, 95, 96)] == [1, 1, 1, 1, 2, 2, 4]
    for c in range(1, 3000, 7):
        for layers in (1, 4, 12, 24):
            assert lift_bottleneck(c, layers) == 2 ** max(0, math.floor(math.log2(c / (2 * layers))))
    with pytest.raises(ConfigError):
        lift_bottleneck(0, 12)


def test_unknown_adapter_name_lists_valid_names():
    with pytest.raises(UnknownNameError) as err:
        make_adapter_config("adaptformr")
    message = str(err.value)
    assert "\n" not in message and "adaptformr" in message
    assert all(name in message for name in ADAPTERS.names())


def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        make_adapter_config("sg-adapter", rank=4)
    message = str(err.value)
    assert "\n" not in message and "rank" in message
    assert all(key in message for key in ("r", "alpha", "use_proj", "detach_text"))


def test_config_coercion_and_validation():
    assert make_adapter_config("adaptformer", r="8").r == 8
    assert make_adapter_config("adaptformer", r="auto").r == "auto"
    assert make_adapter_config("lora", target_modules="q_proj, v_proj").target_modules == ("q_proj", "v_proj")
    assert make_adapter_config("sg-adapter", detach_text="true", alpha="0.1").detach_text is True
    assert make_adapter_config("lora", lora_alpha="16").lora_alpha == 16.0
    assert make_adapter_config("lora", lora_alpha="none").lora_alpha is None
    cfg = make_adapter_config("sg-adapter", alpha=0.1)
    assert cfg.to_dict() == {"name": "sg-adapter", "r": "auto", "alpha": 0.1, "use_proj": True, "detach_text": False}
    for name, bad in [("adaptformer", {"r": 0}), ("sg-adapter", {"alpha": 1.5}), ("lora", {"target_modules": "qkv"}),
                      ("vpt-deep", {"num_prompts": 0}), ("ssf", {"targets": "attn"}), ("adaptformer", {"r": "x"}),
                      ("lora", {"lora_alpha": "-1"})]:
        with pytest.raises(ConfigError):
            make_adapter_config(name, **bad)


def test_bad_inputs_to_inject(model):
    with pytest.raises(ConfigError, match="CLIP vision model"):
        inject_adapter(torch.nn.Linear(2, 2), make_adapter_config("adaptformer"), C)
    with pytest.raises(ConfigError, match="num_classes"):
        inject_adapter(model, make_adapter_config("adaptformer"), 0)
    with pytest.raises(ConfigError, match="num_blocks"):
        inject_adapter(model, make_adapter_config("partial", num_blocks=LAYERS + 1), C)
    inject_adapter(model, "adaptformer", C)
    with pytest.raises(ConfigError, match="already has"):
        inject_adapter(model, "sg-adapter", C)


# ---------- step-0 equivalence and trainable sets ----------

@pytest.mark.parametrize("name", ZERO_INIT)
def test_zero_initialised_adapters_leave_output_unchanged(model, pixels, name):
    with torch.no_grad():
        before = pooled(model, pixels)
    handle = inject_adapter(model, make_adapter_config(name), C)
    handle.set_text_vector(torch.randn(D))
    with torch.no_grad():
        after = pooled(model, pixels)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


TRAINABLE_RULES = {
    "adaptformer": lambda n: ".adapter." in n,
    "sg-adapter": lambda n: ".adapter." in n,
    "lora": lambda n: ".lora_A." in n or ".lora_B." in n,
    "ssf": lambda n: ".ssf." in n,
    "vpt-deep": lambda n: n == "encoder.vpt.prompts",
    "bitfit": lambda n: n.endswith(".bias"),
    "ln-tuning": lambda n: any(k in n for k in ("layer_norm", "layrnorm", "layernorm")),
    "partial": lambda n: n.startswith(f"encoder.layers.{LAYERS - 1}.") or n.startswith("post_layernorm."),
    "full": lambda n: True,
}


@pytest.mark.parametrize("name", sorted(TRAINABLE_RULES))
def test_exactly_the_adapter_parameters_require_grad(model, name):
    handle = inject_adapter(model, make_adapter_config(name), C)
    rule = TRAINABLE_RULES[name]
    all_params = dict(model.named_parameters())
    trainable = {n for n, p in all_params.items() if p.requires_grad}
    assert trainable == {n for n in all_params if rule(n)}
    assert trainable and {n for n, _ in handle.named_trainable_parameters()} == trainable
    assert handle.num_trainable() == sum(all_params[n].numel() for n in trainable)


# ---------- the block formulas (placement in parallel with the MLP) ----------

def reference_block(layer, x, adapter_branch):
    """f_tilde = x + MSA(LN1(x)); out = f_tilde + MLP(LN2(f_tilde)) + branch(f_tilde).

    Calls `.forward` directly so that the adapter's hooks do not fire inside the reference.
    """
    f_tilde = x + layer.self_attn.forward(layer.layer_norm1.forward(x))[0]
    return f_tilde + layer.mlp.forward(layer.layer_norm2.forward(f_tilde)) + adapter_branch(f_tilde)


def test_adaptformer_matches_formula(model):
    inject_adapter(model, make_adapter_config("adaptformer", r=4), C)
    layer = model.encoder.layers[1]
    ad = layer.adapter
    randomize_(ad.parameters())

    def branch(f):
        return ad.scale * (F.relu(F.layer_norm(f, (D,), ad.ln.weight, ad.ln.bias, ad.ln.eps) @ ad.down.weight.T
                                  + ad.down.bias) @ ad.up.weight.T + ad.up.bias)

    x = torch.randn(2, 5, D)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, None), reference_block(layer, x, branch))


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.8, 1.0])
def test_sg_adapter_matches_formula(model, alpha):
    handle = inject_adapter(model, make_adapter_config("sg-adapter", r=4, alpha=alpha), C)
    layer = model.encoder.layers[2]
    sg = layer.adapter
    randomize_(sg.parameters(), seed=3)
    w_bar = torch.randn(D)
    handle.set_text_vector(w_bar)

    def ln(v):
        return F.layer_norm(v, (D,), sg.ln.weight, sg.ln.bias, sg.ln.eps)

    def branch(f):
        f_v, f_t = ln(f), ln(w_bar)
        g = f_t @ sg.proj.weight.T + sg.proj.bias
        h1 = f_v @ sg.down_v.weight.T + sg.down_v.bias
        h2 = (g * f_v) @ sg.down_vt.weight.T + sg.down_vt.bias + sg.s_vt * (f_t @ sg.down_t.weight.T + sg.down_t.bias)
        h = torch.cat([h1, h2], -1)
        a = alpha * F.relu(h) @ sg.up.weight.T + (1 - alpha) * h @ sg.up.weight.T + sg.up.bias
        return sg.s_l * a

    x = torch.randn(2, 5, D)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, None), reference_block(layer, x, branch))


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.8, 1.0])
def test_alpha_mix_is_leaky_relu(model, alpha):
    inject_adapter(model, make_adapter_config("sg-adapter", alpha=alpha), C)
    h = torch.randn(1000)
    mixed = alpha * torch.relu(h) + (1 - alpha) * h
    torch.testing.assert_close(model.encoder.layers[0].adapter.activation(h), mixed)
    torch.testing.assert_close(F.leaky_relu(h, 1 - alpha), mixed)


# ---------- gradients ----------

@pytest.mark.parametrize("name", ["adaptformer", "sg-adapter"])
def test_gradient_reaches_every_adapter_parameter(model, pixels, name):
    handle = inject_adapter(model, make_adapter_config(name), C)
    for layer in model.encoder.layers:
        torch.nn.init.normal_(layer.adapter.up.weight, std=0.1)
    classifier = torch.randn(C, D, requires_grad=True)
    handle.set_text_vector(classifier.mean(0))
    (pooled(model, pixels) @ classifier.T).logsumexp(-1).sum().backward()
    for n, p in handle.named_trainable_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    if name == "sg-adapter":  # the text guidance is differentiable into the classifier rows
        assert classifier.grad is not None and classifier.grad.abs().sum() > 0


def test_sg_detach_text_blocks_gradient_to_classifier(model, pixels):
    handle = inject_adapter(model, make_adapter_config("sg-adapter", detach_text=True), C)
    for layer in model.encoder.layers:
        torch.nn.init.normal_(layer.adapter.up.weight, std=0.1)
    classifier = torch.randn(C, D, requires_grad=True)
    handle.set_text_vector(classifier.mean(0))
    (pooled(model, pixels) * torch.randn(2, D)).sum().backward()
    assert classifier.grad is None


def test_sg_text_vector_errors_and_noop_for_others(model, pixels):
    handle = inject_adapter(model, make_adapter_config("sg-adapter"), C)
    with pytest.raises(RuntimeError, match="set_text_vector"):
        pooled(model, pixels)
    with pytest.raises(DataError, match="shape"):
        handle.set_text_vector(torch.randn(C, D))
    handle.remove()
    other = inject_adapter(model, make_adapter_config("adaptformer"), C)
    other.set_text_vector(torch.randn(C, D))  # no-op, no validation needed
    assert other.state.text is None


def test_gradient_checkpointing_gives_same_grads(model, pixels):
    handle = inject_adapter(model, make_adapter_config("adaptformer"), C)
    randomize_(handle.trainable_parameters())
    grads = []
    for checkpointing in (False, True):
        if checkpointing:  # transformers 5 renamed gradient_ to activation_checkpointing_enable
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        model.train()
        model.zero_grad()
        pooled(model, pixels).pow(2).sum().backward()
        grads.append([p.grad.clone() for p in handle.trainable_parameters()])
    for plain, ckpt in zip(*grads):
        torch.testing.assert_close(plain, ckpt)


# ---------- VPT ----------

@pytest.mark.parametrize(("name", "sets"), [("vpt-shallow", 1), ("vpt-deep", LAYERS)])
def test_vpt_shapes_counts_and_gradients(model, pixels, name, sets):
    handle = inject_adapter(model, make_adapter_config(name, num_prompts=5), C)
    assert handle.num_trainable() == sets * 5 * D
    out = model(pixel_values=pixels)
    assert out.last_hidden_state.shape == (2, 17 + 5, D)  # CLS + 16 patches + prompts
    assert out.pooler_output.shape == (2, D) and torch.isfinite(out.pooler_output).all()
    (out.pooler_output * torch.randn(2, D)).sum().backward()  # a plain sum of a LayerNorm output has zero grad
    grad = model.encoder.vpt.prompts.grad
    assert grad.shape == (sets, 5, D)
    # every prompt set (one per block for deep VPT) is attended to and reaches the CLS output
    assert all(grad[i].abs().sum() > 0 for i in range(sets))


# ---------- disabling, removal, checkpoints ----------

@pytest.mark.parametrize("name", ["adaptformer", "sg-adapter", "lora", "ssf", "vpt-deep"])
def test_disabled_runs_the_frozen_backbone(model, pixels, name):
    with torch.no_grad():
        frozen = pooled(model, pixels)
    handle = inject_adapter(model, make_adapter_config(name), C)
    handle.set_text_vector(torch.randn(D))
    randomize_(handle.trainable_parameters())
    with torch.no_grad():
        adapted = pooled(model, pixels)
        with handle.disabled():
            torch.testing.assert_close(pooled(model, pixels), frozen)
        torch.testing.assert_close(pooled(model, pixels), adapted)
    assert not torch.allclose(adapted, frozen)
    assert all(p.requires_grad for p in handle.trainable_parameters())


def test_in_place_adapters_cannot_be_disabled(model):
    handle = inject_adapter(model, make_adapter_config("bitfit"), C)
    with pytest.raises(ConfigError, match="cannot be disabled"), handle.disabled():
        pass


@pytest.mark.parametrize("name", ["adaptformer", "sg-adapter", "lora", "ssf", "vpt-deep"])
def test_remove_restores_the_backbone(model, pixels, name):
    with torch.no_grad():
        before = pooled(model, pixels)
    keys = list(model.state_dict())
    handle = inject_adapter(model, make_adapter_config(name), C)
    handle.set_text_vector(torch.randn(D))
    randomize_(handle.trainable_parameters())
    handle.remove()
    assert list(model.state_dict()) == keys
    assert all(p.requires_grad for p in model.parameters())  # as before injection
    with torch.no_grad():
        torch.testing.assert_close(pooled(model, pixels), before)


@pytest.mark.parametrize("name", ["adaptformer", "sg-adapter", "lora", "ssf", "vpt-shallow", "bitfit", "partial"])
def test_trainable_state_dict_round_trip(backbone, pixels, tmp_path, name):
    model_a, model_b = copy.deepcopy(backbone), copy.deepcopy(backbone)
    handle_a = inject_adapter(model_a, make_adapter_config(name), C)
    handle_b = inject_adapter(model_b, make_adapter_config(name), C)
    text = torch.randn(D)
    handle_a.set_text_vector(text)
    handle_b.set_text_vector(text)
    randomize_(handle_a.trainable_parameters())
    path = tmp_path / "adapter.safetensors"
    save_file({k: v.contiguous() for k, v in handle_a.trainable_state_dict().items()}, str(path))
    handle_b.load_trainable_state_dict(load_file(str(path)))
    with torch.no_grad():
        torch.testing.assert_close(pooled(model_b, pixels), pooled(model_a, pixels))


def test_load_trainable_state_dict_is_strict(model):
    handle = inject_adapter(model, make_adapter_config("adaptformer"), C)
    sd = dict(handle.trainable_state_dict())
    first = next(iter(sd))
    with pytest.raises(DataError, match="1 missing"):
        handle.load_trainable_state_dict({k: v for k, v in sd.items() if k != first})
    with pytest.raises(DataError, match="1 unexpected"):
        handle.load_trainable_state_dict({**sd, "encoder.extra": torch.zeros(1)})
    with pytest.raises(DataError, match="shape"):
        handle.load_trainable_state_dict({**sd, first: torch.zeros(3, 3)})


# ---------- other hosts and dtypes ----------

def test_inject_into_full_clip_model_touches_only_the_vision_tower():
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=dict(hidden_size=D, intermediate_size=64, num_hidden_layers=2,
                                                 num_attention_heads=4, vocab_size=50,
                                                 bos_token_id=0, eos_token_id=2, pad_token_id=1),
                                vision_config=TINY, projection_dim=16)).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = clip.get_image_features(pixel_values=images)
    handle = inject_adapter(clip.vision_model, make_adapter_config("sg-adapter"), C)
    handle.set_text_vector(torch.randn(D))
    assert all(n.startswith("encoder.layers.") for n, _ in handle.named_trainable_parameters())
    assert all(p.requires_grad for p in clip.text_model.parameters())  # other towers are left alone
    with torch.no_grad():
        after = clip.get_image_features(pixel_values=images)
    torch.testing.assert_close(getattr(after, "pooler_output", after), getattr(before, "pooler_output", before))
    full = inject_adapter(clip, make_adapter_config("full"), C)  # a CLIPModel resolves to its vision tower
    assert all(n.startswith("vision_model.") for n, _ in full.named_trainable_parameters())


def test_adapter_weights_stay_float32_on_a_bfloat16_backbone(model, pixels):
    model.to(torch.bfloat16)
    handle = inject_adapter(model, make_adapter_config("sg-adapter"), C)
    handle.set_text_vector(torch.randn(D))
    assert all(p.dtype == torch.float32 for p in handle.trainable_parameters())
    out = pooled(model, pixels.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()

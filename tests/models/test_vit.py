"""The small Vision Transformer (models/vit.py): shapes, configuration errors, torch.func compatibility."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, vmap

from gradaudit.errors import ConfigError
from gradaudit.models import MODELS, ModelSpec, build_model
from gradaudit.models.vit import VisionTransformer


def test_registered_and_forward_shapes():
    assert MODELS["vit"] is VisionTransformer
    torch.manual_seed(0)
    model = build_model(ModelSpec("vit", 10, (3, 32, 32)))
    assert model.num_patches == 64
    assert tuple(model.patch_embed.weight.shape) == (96, 3, 4, 4) and model.patch_embed.bias is not None
    assert tuple(model.cls_token.shape) == (1, 1, 96) and tuple(model.pos_embed.shape) == (1, 65, 96)
    pos = model.pos_embed.detach()
    assert 0.01 < float(pos.std()) < 0.02                              # small random values, not zeros
    assert float(pos.abs().max()) <= 2 * 0.02 + 1e-6                   # normal(0, 0.02) truncated at 2 std
    assert len(model.blocks) == 4 and model.blocks[0].mlp[0].out_features == 192
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)

    gray = VisionTransformer(num_classes=7, input_shape=(1, 28, 28))
    assert gray.num_patches == 49 and tuple(gray.pos_embed.shape) == (1, 50, 96)
    assert gray(torch.randn(3, 1, 28, 28)).shape == (3, 7)


def test_no_multihead_attention_module():
    model = VisionTransformer(depth=2)
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())
    names = {n for n, _ in model.named_parameters()}
    assert {"blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "norm.weight", "fc.weight"} <= names


def test_every_token_reaches_the_cls_logits():
    """The classifier reads the cls token, and attention makes it depend on every patch (non-zero gradient)."""
    torch.manual_seed(1)
    model = VisionTransformer(depth=2, dim=32, heads=2)
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    model(x).sum().backward()
    per_patch = x.grad.abs().reshape(3, 8, 4, 8, 4).sum(dim=(0, 2, 4))
    assert bool((per_patch > 0).all())
    assert float(model.pos_embed.grad[0, 1:].abs().sum(1).min()) > 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(input_shape=(3, 30, 32)), "multiples of patch_size"),
    (dict(input_shape=(3, 32, 30)), "multiples of patch_size"),
    (dict(patch_size=5), "multiples of patch_size"),
    (dict(dim=90, heads=4), "multiple of heads"),
])
def test_bad_settings_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        VisionTransformer(**kwargs)
    with pytest.raises(ConfigError, match="vit"):
        spec_kwargs = {k: v for k, v in kwargs.items() if k != "input_shape"}
        build_model(ModelSpec("vit", 10, kwargs.get("input_shape", (3, 32, 32)), spec_kwargs))


def test_functional_call_and_vmap_over_two_parameter_sets():
    torch.manual_seed(0)
    model = VisionTransformer(depth=2, dim=32, heads=4)
    base = {k: v.detach() for k, v in model.named_parameters()}
    other = {k: v + 0.05 * torch.randn_like(v) for k, v in base.items()}
    stacked = {k: torch.stack([base[k], other[k]]) for k in base}
    x = torch.randn(2, 3, 32, 32)

    def logits(params, inp):
        return functional_call(model, params, (inp,))

    batched = vmap(logits, in_dims=(0, None))(stacked, x)
    assert batched.shape == (2, 2, 10)
    assert torch.allclose(batched[0], logits(base, x), atol=1e-5)
    assert torch.allclose(batched[1], logits(other, x), atol=1e-5)
    assert not torch.allclose(batched[0], batched[1], atol=1e-4)     # the two sets really differ

    # per-set gradients of the loss w.r.t. the input (what gradient matching differentiates), under vmap
    def loss_x(params, inp):
        return functional_call(model, params, (inp,)).logsumexp(-1).sum()

    gx = vmap(grad(loss_x, argnums=1), in_dims=(0, None))(stacked, x)
    ref = torch.func.grad(loss_x, argnums=1)(other, x)
    assert gx.shape == (2, 2, 3, 32, 32) and torch.allclose(gx[1], ref, atol=1e-5)

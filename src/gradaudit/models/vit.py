"""A small Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale", ICLR 2021), sized for 32x32 inputs: patch size 4, so a 32x32 image is N = 64 tokens.

Architecture, for an input x of shape [B, C, H, W] cut into N = (H / P)(W / P) patches of P x P pixels:

    z_0      = [cls; E p_1 + b; ...; E p_N + b] + pos        (patch_embed: Conv2d(C, dim, P, stride=P))
    z'_l     = z_{l-1} + Attn(LN(z_{l-1}))                      (pre-norm block, l = 1..depth)
    z_l      = z'_l + MLP(LN(z'_l))                             (MLP: Linear(dim, r dim) - GELU - Linear)
    logits   = fc(LN(z_depth)[cls])

with p_k the flattened k-th patch (in the conv weight's [C, P, P] order), ``cls_token`` a learned [1, 1, dim]
vector, ``pos_embed`` a learned [1, N + 1, dim] position embedding (trunc-normal, std 0.02, as in ViT), and
Attn multi-head softmax self-attention written out by hand (one ``qkv`` Linear, softmax(q k^T / sqrt(d_h)) v,
one ``proj`` Linear) rather than ``nn.MultiheadAttention``, so that the model runs under
``torch.func.functional_call`` + ``torch.func.vmap`` (the gradient-matching engine's population) and has
second derivatives everywhere. Linear weights are trunc-normal (std 0.02) with zero biases, as in ViT; the
patch embedding keeps PyTorch's Conv2d initialisation.

Why ``dim >= N`` matters for APRIL (Lu et al., CVPR 2022; :mod:`gradaudit.attacks.analytic.april`): the
position embedding is added to the patch embeddings, so its gradient G = dL/dpos[1:] ([N, dim]) is the
gradient at the patch tokens, and the patch embedding's weight gradient is dL/dE = G^T P, with P the [N, C P P]
matrix of patches. That linear system determines P uniquely only when rank G = N, which needs dim >= N: the
default dim = 96 >= 64 patches of a 32x32 input, whereas a wider patch grid than the embedding leaves the
closed form underdetermined.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .registry import register_model


class Attention(nn.Module):
    """Multi-head softmax self-attention: softmax(q k^T / sqrt(d_h)) v per head, then a projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                                 # [B, heads, n, d_h]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(round(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@register_model("vit")
class VisionTransformer(nn.Module):
    """ViT with a learned cls token and position embedding (see the module docstring).

    Args:
        num_classes: outputs of the classifier ``fc`` on the cls token.
        input_shape: (C, H, W); H and W must be multiples of ``patch_size``.
        patch_size: P, the side of a square patch (the patch embedding's kernel and stride).
        dim: token width; must be a multiple of ``heads`` (and >= the number of patches for APRIL's closed form).
        depth: number of transformer blocks.
        heads: attention heads per block.
        mlp_ratio: hidden width of each block's MLP, as a multiple of ``dim``.
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32),
                 patch_size: int = 4, dim: int = 96, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 2.0) -> None:
        super().__init__()
        c, h, w = (int(s) for s in input_shape)
        if patch_size < 1 or h % patch_size or w % patch_size:
            raise ConfigError(f"vit: the input's height and width ({h}x{w}) must be multiples of patch_size "
                              f"({patch_size})")
        if heads < 1 or dim < 1 or dim % heads:
            raise ConfigError(f"vit: dim ({dim}) must be a positive multiple of heads ({heads})")
        if depth < 0 or not mlp_ratio > 0:
            raise ConfigError(f"vit: depth must be >= 0 and mlp_ratio > 0, got depth={depth}, mlp_ratio={mlp_ratio}")
        self.patch_size, self.dim = patch_size, dim
        self.num_patches = (h // patch_size) * (w // patch_size)
        self.patch_embed = nn.Conv2d(c, dim, patch_size, stride=patch_size, bias=True)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self, std: float = 0.02) -> None:
        """ViT's initialisation: normal(0, std) truncated at +-2 std for the position embedding, the cls token and
        the Linear weights, zero biases, unit LayerNorms."""
        for t in (self.pos_embed, self.cls_token):
            nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # the patch embedding keeps Conv2d's default (kaiming-uniform, a = sqrt(5)) initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)             # [B, N, dim], k = row * (W/P) + col
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        z = torch.cat([cls, tokens], dim=1) + self.pos_embed
        z = self.norm(self.blocks(z))
        return self.fc(z[:, 0])

"""Feature inversion: images whose features at a layer's input match recovered features (CPA for conv nets).

Given features h_hat_k (up to scale) at the input of a layer of the victim (e.g. the first fully connected layer
of a conv net, recovered by the Cocktail Party Attack; Kariyappa et al. 2023, section 4.3), find images x_k
minimising

    L(x) = mean_k (1 - cos(h(x_k), h_hat_k)) + tv * TV(pixels(x))

with Adam, in the normalised input space, clamping the pixels to [0, 1] after every step. The cosine makes the
loss blind to the features' scale; a feature known only up to sign can be passed with ``signed=False``, which
uses 1 - |cos| instead. The model is rebuilt from the Observation alone (architecture, theta_0, buffers) and run
as the client ran it (training mode: batch norm on the batch's own statistics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ...models.registry import build_model
from ...threat.observation import Observation
from ..matching.loop import multistep_scheduler
from ..matching.regularizers import total_variation


def layer_input_model(obs: Observation, layer: str, device: torch.device | str = "cpu"):
    """(model with theta_0 loaded and frozen, function x -> the flattened input of module ``layer``)."""
    model = build_model(obs.model)
    obs.check_model(model)
    state = {**{k: v for k, v in obs.parameters.items()}, **{k: v for k, v in obs.buffers.items()}}
    model.load_state_dict(state, strict=False)
    model = model.to(device).train()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        raise ConfigError(f"model '{obs.model.name}' has no module '{layer}'") from None
    captured: list[torch.Tensor] = []
    module.register_forward_pre_hook(lambda m, inp: captured.append(inp[0]))

    def features(x: torch.Tensor) -> torch.Tensor:
        captured.clear()
        model(x)
        return captured[0].flatten(1)

    return model, features


def invert_features(obs: Observation, layer: str, features: torch.Tensor, *, iterations: int = 600,
                    lr: float = 0.05, tv: float = 0.05, signed: bool = True, seed: int = 0,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, float]:
    """Images [B, C, H, W] in [0, 1] whose ``layer``-input features match ``features`` [B, d]; final loss."""
    device = torch.device(device)
    _, feat = layer_input_model(obs, layer, device)
    c, h, w = obs.model.input_shape
    mean = torch.tensor(obs.data.mean, device=device).view(1, c, 1, 1)
    std = torch.tensor(obs.data.std, device=device).view(1, c, 1, 1)
    target = features.to(device, torch.float32)
    if target.dim() != 2 or target.shape[0] < 1:
        raise ConfigError(f"invert_features needs features [B, d], got {tuple(target.shape)}")
    gen = torch.Generator().manual_seed(seed)
    pixels = (0.5 + 0.1 * torch.randn(target.shape[0], c, h, w, generator=gen)).to(device).requires_grad_(True)
    opt = torch.optim.Adam([pixels], lr=lr)
    sched = multistep_scheduler(opt, iterations) or torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    with torch.no_grad():
        probe = feat((pixels - mean) / std)
    if probe.shape[1] != target.shape[1]:
        raise ConfigError(f"features have {target.shape[1]} entries but the input of '{layer}' has {probe.shape[1]}")
    loss_value = float("nan")
    for _ in range(iterations):
        opt.zero_grad(set_to_none=True)
        cos = F.cosine_similarity(feat((pixels - mean) / std), target, dim=1)
        loss = (1 - (cos if signed else cos.abs())).mean()
        if tv > 0:
            loss = loss + tv * total_variation(pixels)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            pixels.clamp_(0, 1)
        loss_value = float(loss.detach())
    return pixels.detach().cpu(), loss_value

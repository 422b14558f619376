"""APRIL (Lu, Huang, Fu, Xu, Tian, Chen; "APRIL: Finding the Achilles' Heel on Privacy for Vision
Transformers", CVPR 2022): closed-form recovery of a single input from a Vision Transformer's gradient,
through its learned position embedding.

A ViT (:class:`gradaudit.models.vit.VisionTransformer`) embeds the k-th patch p_k (the k-th P x P patch of the
*normalised* input, flattened in the patch-embedding weight's [C, P, P] order) and adds the position embedding:

    z_k = E p_k + b + pos_k,        k = 1..N,

with E the patch-embedding weight ([dim, C, P, P], read as [dim, C P P]). For one sample (B = 1), since pos_k
enters z_k with identity Jacobian and E enters every z_k,

    dL/dpos_k = dL/dz_k,        dL/dE = sum_k dL/dz_k p_k^T = G^T P,

where G = dL/dpos[1:] is [N, dim] (the rows of the patch tokens: the first ``cls_slots`` rows of the position
embedding belong to the cls token, which no patch feeds) and P is the [N, C P P] matrix of patches. Both
gradients are in the update, so P is the solution of the linear system G^T P = dL/dE: unique when
rank G = N, which needs dim >= N (96 >= 64 for the default 32x32 ViT). It is solved here in float64 by an SVD
of G^T (the least-squares, minimum-norm solution, so a rank-deficient G still gives the best fit), then
un-normalised with the observation's mean and std, folded back to [1, C, H, W] and clamped to [0, 1].

``config`` reports the rank of G (``rank``), its condition number sigma_max / sigma_N (``condition``, inf when
rank G < N), the relative residual ||G^T P - dL/dE||_F / ||dL/dE||_F (``residual``; ~1e-7 for an undefended
update, large when the gradient was perturbed) and the patch count N (``patches``).

The attack only reads the observation (weights, update, normalisation) of the ViT an honest server trains; it
needs no labels. A FedAvg update is converted to a mean-gradient estimate ((theta_0 - theta_K) / (K lr)),
exact for one local step. For B > 1 the position-embedding gradient is a sum over samples, the system mixes
them, and the closed form does not apply (use a gradient-matching attack).
"""

from __future__ import annotations

import time

import torch

from ...errors import ConfigError
from ...threat.observation import Observation
from ...threat.threat_model import AttackThreat
from ..base import Attack, ProgressFn, Reconstruction, register_attack


@register_attack("april")
class APRIL(Attack):
    """Read the single private input out of a ViT's patch- and position-embedding gradients.

    Args:
        patch: parameter prefix of the patch embedding (``{patch}.weight`` [dim, C, P, P], a Conv2d with
            stride P).
        position: name of the position embedding parameter ([1, N + cls_slots, dim] or [N + cls_slots, dim]).
        cls_slots: leading rows of the position embedding that belong to no patch (1: the cls token).
        rcond: singular values of G below ``rcond * sigma_max`` are treated as zero (rank and solution).
    """

    name = "april"
    threat = AttackThreat(server="honest", models=("vit",), labels="ignores", max_batch=1, aggregate=False,
                          note="closed form through the position embedding's gradient")

    def __init__(self, patch: str = "patch_embed", position: str = "pos_embed", cls_slots: int = 1,
                 rcond: float = 1e-10, device: str | torch.device = "cpu", seed: int = 0) -> None:
        if cls_slots < 0:
            raise ConfigError(f"april cls_slots must be >= 0, got {cls_slots}")
        if not 0 <= rcond < 1:
            raise ConfigError(f"april rcond must be in [0, 1), got {rcond}")
        self.patch, self.position, self.cls_slots, self.rcond = patch, position, int(cls_slots), float(rcond)
        self.device, self.seed = torch.device(device), seed

    def _tensors(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(dL/dE as [dim, C P P], G = dL/dpos of the patches [N, dim], patch side P), in float64."""
        wname = f"{self.patch}.weight"
        missing = [n for n in (wname, self.position) if n not in obs.parameters]
        if missing:
            absent = ", ".join(repr(m) for m in missing)
            raise ConfigError(f"april needs a ViT's patch embedding '{wname}' and position embedding "
                              f"'{self.position}' (model 'vit'); model '{obs.model.name}' has no {absent}")
        c, h, w = obs.model.input_shape
        weight = obs.parameters[wname]
        if weight.dim() != 4 or weight.shape[1] != c or weight.shape[2] != weight.shape[3] \
                or h % weight.shape[2] or w % weight.shape[2]:
            raise ConfigError(f"'{wname}' must be a [dim, {c}, P, P] patch embedding with P dividing {h}x{w}, got "
                              f"{tuple(weight.shape)}")
        dim, p = weight.shape[0], weight.shape[2]
        n = (h // p) * (w // p)
        grads = obs.gradient_estimate
        f64 = dict(dtype=torch.float64, device=self.device)
        g_pos = grads[self.position].to(**f64)
        g_pos = g_pos.reshape(-1, g_pos.shape[-1])
        if g_pos.shape != (n + self.cls_slots, dim):
            raise ConfigError(f"'{self.position}' must hold {n} patch rows + {self.cls_slots} cls slot(s) of width "
                              f"{dim}, got {tuple(obs.parameters[self.position].shape)}")
        return grads[wname].to(**f64).reshape(dim, -1), g_pos[self.cls_slots:], p

    def reconstruct(self, observation: Observation, progress: ProgressFn | None = None) -> Reconstruction:
        t0 = time.perf_counter()
        obs = observation
        if obs.batch_size != 1:
            raise ConfigError(f"april's closed form needs B=1 (the position-embedding gradient of B samples mixes "
                              f"them), got B={obs.batch_size}; use inverting-gradients for larger batches")
        d_e, g, p = self._tensors(obs)                      # [dim, C P P], [N, dim]
        n = g.shape[0]
        c, h, w = obs.model.input_shape
        # G^T P = dL/dE: minimum-norm least squares by the SVD of G^T = U diag(s) V^T
        u, s, vh = torch.linalg.svd(g.T, full_matrices=False)            # u [dim, r], s [r], vh [r, N]
        s_max = float(s[0]) if s.numel() else 0.0
        keep = s > self.rcond * s_max if s_max > 0 else torch.zeros_like(s, dtype=torch.bool)
        rank = int(keep.sum())
        patches = vh[keep].T @ ((u[:, keep].T @ d_e) / s[keep, None])     # [N, C P P]
        condition = s_max / float(s[n - 1]) if rank == n and s.numel() >= n else float("inf")
        norm_e = float(torch.linalg.matrix_norm(d_e))
        residual = float(torch.linalg.matrix_norm(g.T @ patches - d_e)) / norm_e if norm_e > 0 else float("nan")
        # fold the patches ([N, C, P, P], k = row * (W/P) + col) back to an image
        grid = patches.reshape(h // p, w // p, c, p, p).permute(2, 0, 3, 1, 4).reshape(1, c, h, w)
        mean = torch.tensor(obs.data.mean, dtype=torch.float64, device=self.device).view(1, c, 1, 1)
        std = torch.tensor(obs.data.std, dtype=torch.float64, device=self.device).view(1, c, 1, 1)
        images = (grid * std + mean).clamp(0, 1).to(torch.float32).cpu()
        if progress is not None:
            progress(1, 1, residual)
        info = {
            "patch": self.patch, "position": self.position, "cls_slots": self.cls_slots, "rcond": self.rcond,
            "patches": n, "patch_size": int(p), "rank": rank, "condition": condition, "residual": residual,
            "update_kind": obs.update_kind,
        }
        labels, source = None, "none"
        if obs.labels is not None:
            labels, source = obs.labels.detach().cpu().clone(), "given"
        elif "fc.bias" in obs.update:  # iDLG (Zhao et al. 2020): at B=1 the head's bias gradient is p - e_y
            labels, source = obs.gradient_estimate["fc.bias"].argmin().view(1).cpu(), "idlg"
        return Reconstruction(images=images, labels=labels, attack=self.name, iterations=0,
                              seconds=time.perf_counter() - t0, label_source=source, config=info)

"""SPEAR (Dimitrov, Baader, Mueller, Vechev, "SPEAR: Exact Gradient Inversion of Batches in Federated
Learning", NeurIPS 2024): exact recovery of a whole batch from the gradient of a linear layer followed by a
ReLU, honest server.

For a layer z = W x + b followed by a ReLU, the mean gradient over a batch of B inputs x_j is

    dW = (1/B) sum_j g_j x_j^T = (1/B) G X^T,        db = (1/B) sum_j g_j = (1/B) G 1,

with g_j = dL_j/dz_j in R^m (m neurons) and G = [g_1 ... g_B]. Two facts make it invertible:

* **low rank**: dW has rank B (B < m, B < d), so G = U Q for the m x B matrix U of dW's left singular
  vectors and an unknown invertible B x B matrix Q. Recovering the batch is recovering Q's columns (up to
  scale).
* **ReLU sparsity**: g_j is exactly zero at every neuron the ReLU switched off for sample j (about half of
  them), so each column q_j of Q is orthogonal to the rows u_i of U at those neurons. Conversely, B - 1 rows
  of U that are all zero-rows of the same sample j determine q_j as their null vector; any other choice gives
  a vector c = U q with only the B - 1 chosen zeros.

The attack samples sets of B - 1 neurons (vectorised: thousands of small solves at once), keeps a candidate
c = U q when it has many more zeros than the B - 1 it was built on (``min_zeros``), refines it on its whole
zero set (the null vector of those rows, in float64), and removes duplicates. A set drawn from the common
zeros of two samples yields a mixture c in the span of both, zero only where both are: of three coplanar
candidates the one with the fewest zeros is the mixture and is dropped (correlated images share so many zeros
that a mixture can out-count a third sample's true direction). The rest are ranked by their number of zeros and
taken greedily while linearly independent; the search goes on until the B chosen pass the ReLU check below.
With B directions c_j = g_j / lambda_j the batch follows in closed form, without the unknown scales:

    Y = C^+ dW = (1/B) diag(lambda) X^T,    mu = C^+ db = (1/B) lambda,    x_j = Y_j / mu_j.

Every x_j is then checked against the ReLU pattern it must produce: the neurons with W x_j + b < 0 must be
zeros of c_j (``config["consistent"]``). With the inputs known, the labels follow too: the scale gives
g_j = B mu_j c_j, and g_j = relu'(z_j) * W2^T (softmax(f(x_j)) - e_{y_j}) holds for exactly one class y_j when
the layer feeds a linear classifier (``labels`` in the config; else the observation's labels, if known).

A random set of B - 1 neurons is all-off for a given sample with probability about 2^-(B-1), so the cost
grows exponentially with B (the paper: exact up to B ~ 25 on a GPU). Defenses that perturb the update
(noise, pruning, DP-SGD's noise) break exact low rank and exact zeros: the zero test then uses a tolerance
above the observed noise floor (the (B+1)-th singular value of dW) and recovery degrades; see
``benchmarks/beyond.py``.
"""

from __future__ import annotations

import math
import time

import torch

from ...errors import ConfigError
from ...threat.observation import Observation
from ...threat.threat_model import AttackThreat
from ..base import Attack, ProgressFn, Reconstruction, register_attack


def null_vectors(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit null vectors of a batch of (B-1) x B matrices ``rows`` [T, B-1, B] by one batched solve:
    q = (s, -1) with rows[:, :, :B-1] s = rows[:, :, B-1]. Returns (q [T, B], ok [T]: solve succeeded)."""
    square, last = rows[..., :-1], rows[..., -1:]
    s, info = torch.linalg.solve_ex(square, last)
    q = torch.cat([s.squeeze(-1), -torch.ones_like(s[..., 0, :])], dim=-1)
    ok = (info == 0) & torch.isfinite(q).all(-1)
    return q / q.norm(dim=-1, keepdim=True).clamp_min(1e-30), ok


def refine_direction(basis: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """The unit vector q minimising ||basis[zeros] q|| (its smallest right singular vector), float64."""
    rows = basis[zeros]
    return torch.linalg.svd(rows, full_matrices=True).Vh[-1]


@register_attack("spear")
class SPEAR(Attack):
    """Exact batch recovery from the gradient of a linear layer followed by ReLU (see the module docstring).

    Args:
        layer: parameter prefix of the linear layer (``{layer}.weight`` [m, d], ``{layer}.bias`` [m]); its input
            must be the flattened image (the MLP's first layer, ``fc1``).
        head: parameter prefix of the linear classifier after the ReLU, for label recovery (None: no labels).
        rtol: a neuron counts as a zero of a candidate when |c_i| <= tol * max |c|, with tol the larger of
            ``rtol`` and 3 sqrt(B) times the relative noise floor sigma_{B+1} / sigma_B of dW.
        min_zeros: a candidate is kept when it has at least this fraction of m zeros (and at least 2B).
        chunk: neuron sets drawn per vectorised step.
        max_samples: give up after this many sets.
        time_budget: or after this many seconds (None: no limit; B = 20 takes 10-30 s on one CPU thread).

    ``config`` reports ``directions`` (independent directions found), ``exact`` (B found, every sample
    ReLU-consistent, and dW of numerical rank B: ``rank_gap`` >= 1e3), ``consistent`` (per sample), ``samples`` (sets drawn), ``noise_floor``, ``rank_gap``
    (sigma_B / sigma_{B+1}) and ``labels_recovered``.
    """

    name = "spear"
    #: candidates refined per vectorised step, sparsest first (at small B most draws hit, mostly duplicates)
    REFINE_PER_CHUNK = 64
    #: sigma_B / sigma_{B+1} above which dW counts as exactly rank B (float32 updates without a defense: > 1e4)
    EXACT_GAP = 1e3
    threat = AttackThreat(server="honest", labels="ignores",
                          note="low rank + ReLU sparsity of one linear layer's gradient (the MLP's fc1)")

    def __init__(self, layer: str = "fc1", head: str | None = "fc2", rtol: float = 1e-4, min_zeros: float = 0.15,
                 chunk: int = 8192, max_samples: int = 10**12, time_budget: float | None = 120.0,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
        if not (0 < min_zeros < 1):
            raise ConfigError(f"spear min_zeros must be a fraction in (0, 1), got {min_zeros}")
        if not (rtol > 0 and chunk >= 1 and max_samples >= 1):
            raise ConfigError("spear needs rtol > 0, chunk >= 1 and max_samples >= 1")
        if time_budget is not None and not (math.isfinite(time_budget) and time_budget > 0):
            raise ConfigError(f"spear time_budget must be > 0 seconds, got {time_budget}")
        self.layer, self.head, self.rtol, self.min_zeros = layer, head, float(rtol), float(min_zeros)
        self.chunk, self.max_samples, self.time_budget = int(chunk), int(max_samples), time_budget
        self.device, self.seed = torch.device(device), seed

    # ---------------------------------------------------------------------------------------------------------
    def _layer(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        wname, bname = f"{self.layer}.weight", f"{self.layer}.bias"
        if wname not in obs.parameters or bname not in obs.parameters:
            raise ConfigError(f"spear needs a linear layer with a bias on the flattened input ('{wname}', "
                              f"'{bname}'); model '{obs.model.name}' has no such layer (use model 'mlp' or name "
                              f"the layer with layer=)")
        n = math.prod(obs.model.input_shape)
        weight = obs.parameters[wname]
        if weight.dim() != 2 or weight.shape[1] != n:
            raise ConfigError(f"'{wname}' must take the flattened input ({n} values), got shape "
                              f"{tuple(weight.shape)}")
        m, b = weight.shape[0], obs.batch_size
        if b >= m or b >= n:
            raise ConfigError(f"spear needs B < width and B < input size (rank B gradient): B={b}, width {m}, "
                              f"input {n}")
        grads = obs.gradient_estimate
        f64 = dict(dtype=torch.float64, device=self.device)
        return weight.to(**f64), obs.parameters[bname].to(**f64), grads[wname].to(**f64), grads[bname].to(**f64)

    def _search(self, basis: torch.Tensor, tol: float, need_zeros: int, b: int, deadline: float,
                progress: ProgressFn | None, done, refine: bool) -> tuple[list[torch.Tensor], list[int], int]:
        """Draw sets of B-1 neurons until ``done(found, zeros)`` (B independent directions whose inputs are all
        ReLU-consistent) or the budget ends. Returns the refined unit directions c = U q, their zero counts and
        the number of sets drawn."""
        m = basis.shape[0]
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        basis32 = basis.to(torch.float32)
        # neurons off for the whole batch have a zero row: they constrain nothing, never draw them
        live = basis.norm(dim=1) > 1e-9 * basis.norm(dim=1).max()
        n_live = int(live.sum())
        found: list[torch.Tensor] = []
        zeros_of: list[int] = []
        shared: set[bytes] = set()          # zero sets of draws whose neurons were off for several samples
        drawn = 0
        while drawn < self.max_samples and time.perf_counter() < deadline:
            t = min(self.chunk, self.max_samples - drawn)
            if b == 1:
                q = torch.ones(1, 1, dtype=torch.float32)
                ok = torch.ones(1, dtype=torch.bool)
            else:
                # B-1 distinct live neurons, uniformly: consecutive blocks of random permutations of the live
                # neurons (each block is a uniform draw; one sort serves n_live // (B-1) of them)
                per = max(1, n_live // (b - 1))
                perms = torch.rand(-(-t // per), m, generator=gen).masked_fill_(~live, -1.0).argsort(dim=1,
                                                                                                  descending=True)
                idx = perms[:, : per * (b - 1)].reshape(-1, b - 1)[:t].to(self.device)
                q, ok = null_vectors(basis32[idx])
            drawn += t
            c = q @ basis32.T                                       # [t, m]
            scale = c.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
            count = (c.abs() <= max(tol, 1e-3) * scale).sum(dim=1)   # float32 screening, loose
            hits = torch.nonzero(ok & (count >= need_zeros)).flatten()
            unit = c[hits] / c[hits].norm(dim=1, keepdim=True)
            if found:  # directions already found (most hits at small B) are dropped before any refinement
                new = (unit @ torch.stack(found).to(torch.float32).T).abs().amax(dim=1) <= 0.99
                hits, unit = hits[new], unit[new]
            order = count[hits].argsort(descending=True)[: self.REFINE_PER_CHUNK]  # sparsest first
            fresh = 0
            for h, direction in zip(hits[order].tolist(), unit[order]):
                if fresh and float((torch.stack(found[-fresh:]).to(torch.float32) @ direction).abs().max()) > 0.99:
                    continue
                # neurons off for two samples at once leave a 2-D null space: every such draw gives another
                # vector of span{c_s, c_j}, all zero exactly on Z_s & Z_j, so that zero set marks them once seen
                signature = (c[h].abs() <= max(tol, 1e-3) * scale[h]).numpy().tobytes()
                if signature in shared:
                    continue
                # the same B-1 neurons again in float64: the true zeros are then exact to ~1e-12 and a random
                # entry that the loose float32 screen took for a zero cannot bend the direction
                if b == 1:
                    q64 = torch.ones(1, dtype=torch.float64, device=basis.device)
                else:
                    rows = basis[idx[h]]
                    sv = torch.linalg.svdvals(rows)
                    if sv[-1] < 1e-8 * sv[0]:
                        shared.add(signature)
                        continue
                    q64 = null_vectors(rows.unsqueeze(0))[0][0]
                cr = basis @ q64
                zmask = cr.abs() <= tol * cr.abs().max()
                if refine:  # a noisy update: fit the direction to its whole zero set instead of B-1 rows
                    cr = basis @ refine_direction(basis, zmask.nonzero().flatten())
                    zmask = cr.abs() <= tol * cr.abs().max()
                nz = int(zmask.sum())
                if nz < need_zeros:
                    continue
                cr = cr / cr.norm()
                if any(abs(float(cr @ f)) > 1 - 1e-6 for f in found):
                    continue
                found.append(cr)
                zeros_of.append(nz)
                fresh += 1
            if progress is not None:
                progress(min(len(found), b), b, 0.0)
            if fresh and done(found, zeros_of):
                break
            if b == 1:
                break
        return found, zeros_of, drawn

    @staticmethod
    def _mixtures(found: list[torch.Tensor], masks: list[torch.Tensor]) -> set[int]:
        """Directions that are mixtures of two others. A set of neurons off for two samples s and j yields
        c in span{c_s, c_j}, zero only where both are, so its zero set lies inside both of theirs. Correlated
        images share many zeros, so a mixture can have more zeros than a third sample's true direction: it is
        removed by this test (zero set inside two others' and c in their span), not by its count."""
        n = len(found)
        if n < 3:
            return set()
        z = torch.stack(masks).to(torch.float64)                        # [n, m] zero masks
        size = z.sum(1)
        inside = (z @ z.T >= size[:, None] - 0.5) & (size[None, :] > size[:, None])   # Z_i inside Z_j, j larger
        mixed = set()
        for i in torch.nonzero(inside.sum(1) >= 2).flatten().tolist():
            parents = torch.nonzero(inside[i]).flatten().tolist()
            for a in range(len(parents)):
                for b in range(a + 1, len(parents)):
                    pair = torch.stack([found[parents[a]], found[parents[b]]], dim=1)
                    coef = torch.linalg.lstsq(pair, found[i].unsqueeze(1)).solution
                    if float((pair @ coef).squeeze(1).sub(found[i]).norm()) < 1e-6:
                        mixed.add(i)
                        break
                if i in mixed:
                    break
        return mixed

    @staticmethod
    def _last_direction(known: list[torch.Tensor], basis: torch.Tensor, dw: torch.Tensor, db: torch.Tensor,
                        weight: torch.Tensor, bias: torch.Tensor, tol: float) -> tuple[torch.Tensor, int] | None:
        """The B-th direction from B-1 known ones, without drawing it. The vector a of span(U) orthogonal to
        the known c_j sees only the missing sample: a^T dW = (a . c_B) y_B^T and a^T db = (a . c_B) mu_B, so
        x_B = a^T dW / a^T db exactly; its ReLU pattern gives c_B's zero set, and c_B is the null vector of
        U's rows there. Returns (unit c_B, its zeros) or None (no such x, or not enough zeros)."""
        q = basis.T @ torch.stack(known, dim=1)                           # [B, B-1]
        v = torch.linalg.svd(q.T, full_matrices=True).Vh[-1]
        a = basis @ v
        denom = float(a @ db)
        if abs(denom) <= 1e-12 * float(a.norm() * db.norm()):
            return None
        x = (a @ dw) / denom
        off = torch.nonzero(weight @ x + bias < 0).flatten()
        if len(off) < basis.shape[1]:
            return None
        c = basis @ refine_direction(basis, off)
        return c / c.norm(), int((c.abs() <= tol * c.abs().max()).sum())

    def _greedy(self, found: list[torch.Tensor], zeros_of: list[int], b: int,
                masks: list[torch.Tensor] | None = None) -> list[int]:
        """At most B directions: the most zeros first, kept while linearly independent (with ``masks``, the zero
        sets, mixtures of two others are left out first)."""
        mixed = self._mixtures(found, masks) if masks is not None else set()
        chosen: list[int] = []
        for i in sorted(range(len(found)), key=lambda i: -zeros_of[i]):
            if i in mixed:
                continue
            s = torch.linalg.svdvals(torch.stack([found[j] for j in chosen + [i]], dim=1))
            if s[-1] > 1e-6 * s[0]:
                chosen.append(i)
            if len(chosen) == b:
                break
        return chosen

    def reconstruct(self, observation: Observation, progress: ProgressFn | None = None) -> Reconstruction:
        t0 = time.perf_counter()
        obs = observation
        weight, bias, dw, db = self._layer(obs)
        b, m = obs.batch_size, weight.shape[0]
        u, s, _ = torch.linalg.svd(dw, full_matrices=False)
        basis = u[:, :b]                                              # [m, B]: span of g_1..g_B
        floor = float(s[b] / s[b - 1]) if len(s) > b and s[b - 1] > 0 else 0.0
        tol = max(self.rtol, 3.0 * floor * math.sqrt(b))
        gap = float(s[b - 1] / s[b]) if len(s) > b and s[b] > 0 else float("inf")
        need = max(2 * b, int(math.ceil(self.min_zeros * m)))
        deadline = t0 + (self.time_budget if self.time_budget is not None else float("inf"))

        def pick(found: list[torch.Tensor], zeros_of: list[int]) -> tuple[list[int], bool]:
            """B directions whose inputs pass the ReLU check: the greedy choice, else the one without mixtures
            (the mixture test is the costlier one, so it runs only when needed)."""
            def zero_masks() -> list[torch.Tensor]:
                return [f.abs() <= tol * f.abs().max() for f in found]

            chosen: list[int] = []
            for masks in (None, zero_masks()):
                chosen = self._greedy(found, zeros_of, b, masks)
                if len(chosen) == b - 1 and b > 1:  # the hardest sample follows from the other B-1
                    last = self._last_direction([found[i] for i in chosen], basis, dw, db, weight, bias, tol)
                    if last is not None and last[1] >= need:
                        if all(abs(float(last[0] @ f)) <= 1 - 1e-6 for f in found):
                            found.append(last[0])
                            zeros_of.append(last[1])
                        chosen = self._greedy(found, zeros_of, b, None if masks is None else zero_masks())
                if len(chosen) < b:
                    continue
                _, _, consistent = self._solve(obs, weight, bias, dw, db, [found[i] for i in chosen], basis, tol)
                if all(consistent):
                    return chosen, True
            return chosen, False

        found, zeros_of, drawn = self._search(basis, tol, need, b, deadline, progress,
                                              lambda f, z: pick(f, z)[1], refine=gap < self.EXACT_GAP)
        picked, _ = pick(found, zeros_of)
        directions, k = [found[i] for i in picked], len(picked)
        images, labels, consistent = self._solve(obs, weight, bias, dw, db, directions, basis, tol)
        label_source = "none"
        recovered = None
        if labels is not None and k == b:
            recovered, label_source = labels, "recovered (spear)"
        elif obs.labels is not None:
            recovered, label_source = obs.labels.detach().cpu().clone(), "given"
        # exact: B directions, every input ReLU-consistent, and dW numerically of rank B (no noise on it)
        exact = k == b and all(consistent[:k]) and gap >= self.EXACT_GAP
        info = {"layer": self.layer, "directions": k, "exact": bool(exact), "consistent": consistent,
                "samples": int(drawn), "tolerance": tol, "noise_floor": floor,
                "rank_gap": gap,
                "zeros": [int(zeros_of[i]) for i in picked],
                "labels_recovered": labels is not None and k == b, "update_kind": obs.update_kind}
        return Reconstruction(images=images, labels=recovered, attack=self.name, iterations=int(drawn),
                              seconds=time.perf_counter() - t0, label_source=label_source, config=info)

    def _solve(self, obs: Observation, weight: torch.Tensor, bias: torch.Tensor, dw: torch.Tensor,
               db: torch.Tensor, directions: list[torch.Tensor], basis: torch.Tensor,
               tol: float) -> tuple[torch.Tensor, torch.Tensor | None, list[bool]]:
        """x_j = (C^+ dW)_j / (C^+ db)_j for the found directions (the basis completed by U's orthogonal
        complement when fewer than B were found); the ReLU check; the labels through the head."""
        b = obs.batch_size
        c, h, w = obs.model.input_shape
        k = len(directions)
        images = torch.zeros(b, c, h, w, dtype=torch.float32)
        if k == 0:
            return images, None, []
        cols = torch.stack(directions, dim=1)                         # [m, k]
        if k < b:  # complete the basis inside span(U) so the solve is square; the extra rows are discarded
            rest = basis - cols @ torch.linalg.lstsq(cols, basis).solution
            extra = torch.linalg.svd(rest, full_matrices=False).U[:, : b - k]
            cols = torch.cat([cols, extra], dim=1)
        pinv = torch.linalg.pinv(cols)
        y, mu = pinv @ dw, pinv @ db                                  # [B, d], [B]
        x = y[:k] / mu[:k, None]                                      # normalised inputs, flattened
        z = x @ weight.T + bias                                       # [k, m] pre-activations
        zero_sets = cols[:, :k].abs().T <= tol * cols[:, :k].abs().amax(0)[:, None]
        off = z < 0
        consistent = [bool(((off[j] & ~zero_sets[j]).sum()) <= max(1, int(0.01 * off[j].sum()))) for j in range(k)]
        mean = torch.tensor(obs.data.mean, dtype=torch.float64, device=x.device).view(1, c, 1, 1)
        std = torch.tensor(obs.data.std, dtype=torch.float64, device=x.device).view(1, c, 1, 1)
        pixels = x.view(k, c, h, w) * std + mean
        images[:k] = pixels.clamp(0, 1).to(torch.float32).cpu()
        labels = self._labels(obs, z, cols[:, :k] * (b * mu[:k])[None, :]) if k == b else None
        return images, labels, consistent

    def _labels(self, obs: Observation, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
        """y_j = argmin_y || relu'(z_j) * W2^T (p_j - e_y) - g_j || for a linear head on the ReLU output."""
        if self.head is None or f"{self.head}.weight" not in obs.parameters:
            return None
        w2 = obs.parameters[f"{self.head}.weight"].to(torch.float64).to(z.device)    # [C, m]
        if w2.dim() != 2 or w2.shape[1] != z.shape[1]:
            return None
        b2 = obs.parameters.get(f"{self.head}.bias")
        act = z.clamp_min(0)
        logits = act @ w2.T + (0 if b2 is None else b2.to(torch.float64).to(z.device))
        p = logits.softmax(-1)                                          # [B, C]
        on = (z > 0).to(torch.float64)                                  # [B, m]
        eye = torch.eye(w2.shape[0], dtype=torch.float64, device=z.device)
        residual = p[:, None, :] - eye[None]                            # [B, C(y), C]
        pred = (residual @ w2) * on[:, None, :]                         # [B, C(y), m]
        err = (pred - g.T[:, None, :]).norm(dim=-1)
        return err.argmin(dim=1).cpu()

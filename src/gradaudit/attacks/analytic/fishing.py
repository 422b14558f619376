"""Class fishing (Wen, Geiping, Fowl, Goldblum, Goldstein, "Fishing for User Data in Large-Batch Federated
Learning via Gradient Magnification", ICML 2022) read out with Robbing the Fed's imprint block.

The server sent :class:`gradaudit.models.fishing.FishingModel`: an imprint block in front of a base network whose
classifier (logits f_c = W_c . h + b_c) has W_c = 0 and b_c = beta for every class c != t, with beta far above
the target logit. Then p_it = 0 and p_ic = 1/(C - 1) for every sample (see that module), and

    dL_i/dh_i = W_t (p_it - 1[y_i = t]) = -W_t 1[y_i = t]:

only the samples of class t reach the layers before the classifier. The attack

1. finds t from the weights the server sent (the classifier of the observation's parameters, the last 2-D weight
   with C rows and a bias: C - 1 rows exactly zero sharing one bias, the remaining row is t), and checks it
   against the model's ``target_class`` when the spec names one;
2. counts the fished samples from the target row's bias gradient, db_t = (1/B) sum_i (p_it - 1[y_i = t]) =
   -n_t / B, so n_t = round(-B db_t) (B: all samples of the update, a secure aggregate's total), and every other
   class from db_c = 1/(C - 1) - n_c / B;
3. reads the imprint bins exactly as Robbing the Fed does (:class:`~.robbing_the_fed.RobbingTheFed`): the bins
   hold only the n_t fished samples, each alone in its bin with probability (1 - 1/K)^(n_t - 1), read to float
   precision by the difference of consecutive rows.

It returns B images: at most min(B, n_t) candidates (those passing Robbing the Fed's single-sample checks first,
then by the strength of their bin), then zeros. Labels: t for the first n_t images (the candidates and the
fished samples no bin isolated), then the other classes by their counts (from the bias gradients, or the
observation's labels when the threat model grants them).

What is not the paper's: Wen et al. invert the magnified gradient by optimisation and use feature fishing, a
binary search over several rounds, to split a common class; one observation is one round, so feature fishing is
not implemented and the imprint block's closed form replaces the optimisation.
"""

from __future__ import annotations

import time
from typing import Annotated, Optional

import torch
from annotated_types import Ge

from ...errors import ConfigError
from ...threat.observation import Observation
from ...threat.threat_model import AttackThreat
from ..base import Attack, ProgressFn, Reconstruction, register_attack
from .robbing_the_fed import RobbingTheFed


@register_attack("fishing")
class Fishing(Attack):
    """Count and read out the samples of the fished class (see the module docstring).

    Args:
        layer: parameter prefix of the imprint block (``{layer}.weight`` [K, N], ``{layer}.bias`` [K]).
        classifier: parameter prefix of the fished classifier; None: the last 2-D weight with one row per class
            and a bias.
        rtol, range_tol: Robbing the Fed's (a bin is empty below ``rtol`` times the largest bias difference; how
            far outside [0, 1] a consistent candidate's pixels may lie).

    ``config`` reports ``target_class`` (t), ``fished`` (n_t), ``fished_estimate`` (-B db_t before rounding),
    ``label_counts`` (n_c for every class), ``bins_nonempty`` and ``bins_consistent`` (Robbing the Fed's, over the
    fished samples), ``recovered`` (candidates returned) and their bins, strengths and consistency.
    """

    name = "fishing"
    threat = AttackThreat(server="malicious", models=("fishing",), labels="ignores",
                          note="a fished classifier lets only class t reach the imprint block; its bins then hold "
                               "only the n_t fished samples, counted exactly by the target row's bias gradient")

    def __init__(self, layer: str = "imprint", classifier: Optional[str] = None,
                 rtol: Annotated[float, Ge(0)] = 1e-5, range_tol: Annotated[float, Ge(0)] = 0.02,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
        self.readout = RobbingTheFed(layer=layer, rtol=rtol, range_tol=range_tol, order="strength", device=device,
                                     seed=seed)
        self.layer, self.classifier = layer, classifier
        self.rtol, self.range_tol = float(rtol), float(range_tol)
        self.device, self.seed = torch.device(device), seed

    def _classifier_name(self, obs: Observation) -> str:
        if self.classifier is not None:
            if f"{self.classifier}.weight" not in obs.parameters or f"{self.classifier}.bias" not in obs.parameters:
                raise ConfigError(f"fishing: the model has no classifier '{self.classifier}' (weight and bias)")
            return self.classifier
        c = obs.model.num_classes
        names = [k[: -len(".weight")] for k, v in obs.parameters.items()
                 if k.endswith(".weight") and v.dim() == 2 and v.shape[0] == c
                 and f"{k[: -len('.weight')]}.bias" in obs.parameters]
        if not names:
            raise ConfigError(f"fishing needs a linear classifier with {c} rows and a bias; model "
                              f"'{obs.model.name}' has none")
        return names[-1]

    def target(self, obs: Observation) -> tuple[int, str]:
        """(t, classifier name): the class the server fished, read from the weights it sent."""
        name = self._classifier_name(obs)
        weight = obs.parameters[f"{name}.weight"].detach().to(torch.float64)
        bias = obs.parameters[f"{name}.bias"].detach().to(torch.float64)
        zero = (weight == 0).all(1)
        fished = zero & (bias == bias.max())
        c = weight.shape[0]
        if c < 2 or int(fished.sum()) != c - 1 or float(bias.max() - bias[~fished].max()) <= 0:
            raise ConfigError(f"fishing: classifier '{name}' of model '{obs.model.name}' is not fished (the server "
                              f"must send model 'fishing': {c - 1} rows of zero weight sharing one bias above the "
                              f"target's); found {int(zero.sum())} zero rows")
        t = int(torch.nonzero(~fished).flatten()[0])
        named = obs.model.kwargs.get("target_class")
        if named is not None and int(named) != t:
            raise ConfigError(f"fishing: the weights fish class {t} but the model spec names target_class={named}")
        return t, name

    def reconstruct(self, observation: Observation, progress: ProgressFn | None = None) -> Reconstruction:
        t0 = time.perf_counter()
        obs = observation
        t, name = self.target(obs)
        batch = obs.batch_size
        db = obs.gradient_estimate[f"{name}.bias"].detach().to(torch.float64).cpu()
        c = db.numel()
        estimate = -batch * float(db[t])
        n_t = min(batch, max(0, round(estimate)))
        counts = (batch * (1.0 / (c - 1) - db)).round().clamp(0, batch).to(torch.long)
        counts[t] = n_t
        rtf = self.readout.reconstruct(obs)
        info = rtf.config
        consistent = info["candidate_consistent"]
        # Robbing the Fed returns its candidates by strength: put the consistent ones first, keep min(B, n_t)
        order = sorted(range(info["recovered"]), key=lambda i: (not consistent[i], i))[: min(batch, n_t)]
        images = torch.zeros_like(rtf.images)
        images[: len(order)] = rtf.images[order]
        labels, source = self._labels(obs, t, n_t, counts)
        if progress is not None:
            progress(1, 1, 0.0)
        config = {
            "layer": self.layer, "classifier": name, "target_class": t, "fished": n_t, "fished_estimate": estimate,
            "label_counts": [int(v) for v in counts], "bins": info["bins"], "rtol": self.rtol,
            "range_tol": self.range_tol, "bins_nonempty": info["bins_nonempty"],
            "bins_consistent": info["bins_consistent"], "recovered": len(order),
            "candidate_bins": [info["candidate_bins"][i] for i in order],
            "candidate_strength": [info["candidate_strength"][i] for i in order],
            "candidate_consistent": [consistent[i] for i in order], "update_kind": obs.update_kind,
        }
        return Reconstruction(images=images, labels=labels, attack=self.name, iterations=0,
                              seconds=time.perf_counter() - t0, label_source=source, config=config)

    @staticmethod
    def _labels(obs: Observation, t: int, n_t: int, counts: torch.Tensor) -> tuple[torch.Tensor, str]:
        """t for the first n_t positions, then the other classes: the observation's labels when granted, else
        the counts the bias gradients give (padded with t, or cut, to B)."""
        batch = obs.batch_size
        if obs.labels is not None:
            given = obs.labels.detach().cpu().reshape(-1).to(torch.long)
            rest = given[given != t]
            fished = torch.full((batch - rest.numel(),), t, dtype=torch.long)
            return torch.cat([fished, rest]), "given"
        rest = torch.cat([torch.full((int(counts[c]),), c, dtype=torch.long)
                          for c in range(counts.numel()) if c != t] or [torch.zeros(0, dtype=torch.long)])
        labels = torch.cat([torch.full((n_t,), t, dtype=torch.long), rest])[:batch]
        if labels.numel() < batch:
            labels = torch.cat([labels, torch.full((batch - labels.numel(),), t, dtype=torch.long)])
        return labels, "fished classifier"

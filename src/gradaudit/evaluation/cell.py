"""One audit cell: data -> model -> client (+ defenses) -> Observation -> attack -> metrics.

:func:`prepare` validates everything that can be checked before work starts (names, sizes, device, data
root, defense specs) and returns a :class:`PreparedRun`; :func:`run_attack` then runs the attack. The ground
truth stays inside this module and the metrics: the attack receives only the Observation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
import torch

from ..attacks.base import Attack, ProgressFn, Reconstruction
from ..attacks.registry import build_attack
from ..config import RunConfig
from ..data import ImageDataset, load_dataset
from ..defenses.base import UpdateTransform
from ..defenses.registry import defense_info, parse_defense
from ..defenses.secure_aggregation import SecureAggregation
from ..errors import ConfigError
from ..metrics import LPIPSMetric, ReconstructionScores, score_reconstruction
from ..models.registry import ModelSpec, build_model
from ..models.weights import check_weights, load_weights, read_weights
from ..threat.aggregation import aggregate
from ..threat.client import Client, ServerKnowledge
from ..threat.observation import DataSpec, Observation
from .fit import UpdateFit, against_flat_image, update_fit


@dataclass
class PreparedRun:
    config: RunConfig
    dataset: ImageDataset
    indices: list[int]
    spec: ModelSpec
    attack: Attack
    defenses: list[UpdateTransform]
    device: torch.device
    #: secure aggregation over this many clients (the attacked one and N-1 others), or None
    aggregate: SecureAggregation | None = None
    #: the private batches of the other clients under secure aggregation
    others: list[list[int]] = field(default_factory=list)


@dataclass
class AuditResult:
    config: RunConfig
    observation: Observation
    reconstruction: Reconstruction
    truth: torch.Tensor | None
    true_labels: torch.Tensor | None
    scores: ReconstructionScores | None
    timings: dict[str, float] = field(default_factory=dict)
    defenses: list[str] = field(default_factory=list)
    #: for a self-tuning attack: every candidate's mean PSNR against the truth, the selected one's, and the
    #: selection regret (best candidate PSNR - selected PSNR, dB); None otherwise
    tuning: dict | None = None
    #: how well the reconstruction explains the observed update against the private batch
    #: (:func:`~.fit.update_fit`: cosine distances, whether the attack under-fit, and whether it fit and still
    #: recovered nothing, :func:`~.fit.against_flat_image`); None where undefined
    fit: UpdateFit | None = None


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def choose_indices(n: int, batch_size: int, seed: int, indices: list[int] | None) -> list[int]:
    """The private batch: the given indices, else ``batch_size`` distinct samples drawn with ``seed``."""
    if indices is not None:
        if len(indices) != batch_size:
            raise ConfigError(f"data.indices has {len(indices)} entries but threat.batch_size is {batch_size}")
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise ConfigError(f"data.indices {bad[0]} is out of range for a dataset of {n} samples")
        return list(indices)
    if batch_size > n:
        raise ConfigError(f"batch size {batch_size} is larger than the dataset ({n} samples)")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:batch_size].tolist()


def prepare(config: RunConfig, *, trust_code: bool = False, allow_legacy: bool = False) -> PreparedRun:
    """Validate and load everything; no attack work happens here.

    ``trust_code``: the config may name a model or generator as ``package.module:factory`` and the caller
    trusts that code (:mod:`gradaudit.trust`); ``allow_legacy``: read a generator checkpoint without the
    metadata checksum. Both are the caller's choice, never the config's."""
    device = resolve_device(config.device)
    defenses, aggregate = split_defenses([parse_defense(s) for s in config.defenses])
    attack = build_attack(config.attack.preset, device=device, seed=config.seed, trust_code=trust_code,
                          allow_legacy=allow_legacy, **config.attack.overrides())
    dataset = load_dataset(config.data.name, root=config.data.root, split=config.data.split,
                           image_size=config.data.image_size, download=config.data.download)
    indices = choose_indices(len(dataset), config.threat.batch_size, config.seed, config.data.indices)
    from ..attacks.priors import check_attack_held_out

    # a prior must not know the batch
    check_attack_held_out(attack, dataset.name, indices, config.data.split, dataset.labels)
    spec = ModelSpec(config.model.name, dataset.num_classes, dataset.shape, dict(config.model.kwargs),
                     trust_code=trust_code)
    model = build_model(spec)  # fail early on a bad model name or kwargs
    if config.model.weights is not None:  # ... and on weights that do not fit it
        check_weights(model, read_weights(config.model.weights), spec.name, config.model.weights)
    others = other_clients(len(dataset), indices, aggregate, config.seed)
    return PreparedRun(config, dataset, indices, spec, attack, defenses, device, aggregate, others)


def split_defenses(defenses: list) -> tuple[list[UpdateTransform], SecureAggregation | None]:
    """The client's update transforms (in order) and the aggregate-level defense, which must come last."""
    updates, aggregate = [], None
    for d in defenses:
        if defense_info(d).acts_on == "aggregate":
            if aggregate is not None:
                raise ConfigError("only one secure aggregation per defense chain")
            aggregate = d
        elif aggregate is not None:
            raise ConfigError(f"defense {d.describe()} comes after {aggregate.describe()}: a client transforms "
                              "its update before it is aggregated, so list secure aggregation last")
        else:
            updates.append(d)
    return updates, aggregate


def other_clients(n: int, indices: list[int], aggregate: SecureAggregation | None, seed: int) -> list[list[int]]:
    """Under secure aggregation over N clients: N-1 further private batches of the attacked batch's size, drawn
    without repetition from the rest of the dataset (fixed by ``seed``)."""
    if aggregate is None:
        return []
    b = len(indices)
    rest = [i for i in range(n) if i not in set(indices)]
    need = b * (aggregate.num_clients - 1)
    if need > len(rest):
        raise ConfigError(f"secure aggregation over {aggregate.num_clients} clients of {b} images needs "
                          f"{b * aggregate.num_clients} images; the dataset has {n}")
    g = torch.Generator().manual_seed(seed + 7919)
    pick = [rest[i] for i in torch.randperm(len(rest), generator=g)[:need].tolist()]
    return [pick[k * b:(k + 1) * b] for k in range(aggregate.num_clients - 1)]


#: public images a malicious server uses to prepare its model (at most this many)
PUBLIC_IMAGES = 512


def prepare_on_public_data(model: torch.nn.Module, run: PreparedRun) -> None:
    """The server's side, before it sends a model that asks for it (``centre_on_public``): centre the model on
    public data, i.e. images of the same dataset outside the private batch (never the batch itself)."""
    private = set(run.indices)
    public = [i for i in range(len(run.dataset)) if i not in private][:PUBLIC_IMAGES]
    if not public:
        raise ConfigError("the model asks to be centred on public data but the dataset holds no image outside "
                          "the private batch")
    model.centre_features(run.dataset.normalize(run.dataset.batch(public)[0]))


def observe(run: PreparedRun) -> tuple[Observation, torch.Tensor, torch.Tensor]:
    """The client's side: build the victim model with the run's seed, share the update of the private batch."""
    cfg = run.config
    torch.manual_seed(cfg.seed)
    model = build_model(run.spec)
    if cfg.model.weights is not None:
        load_weights(model, cfg.model.weights, run.spec.name)
    if getattr(model, "centre_on_public", False):
        prepare_on_public_data(model, run)
    data = DataSpec(run.dataset.name, tuple(run.dataset.mean), tuple(run.dataset.std))
    knowledge = ServerKnowledge(labels=cfg.threat.labels_known, bn_statistics=cfg.threat.bn_statistics_known)
    batches = [run.indices] + run.others
    observations, images, labels = [], [], []
    for i, batch in enumerate(batches):  # the attacked client first, then the others of a secure aggregate
        x, y = run.dataset.batch(batch)
        client = Client(model, run.spec, data, transforms=run.defenses, knowledge=knowledge,
                        seed=cfg.seed if i == 0 else cfg.seed * 1009 + i, **cfg.threat.client_kwargs())
        observations.append(client.share(x, y))
        images.append(x)
        labels.append(y)
    if run.aggregate is None:
        return observations[0], images[0], labels[0]
    return aggregate(observations, run.aggregate.num_clients), torch.cat(images), torch.cat(labels)


def run_attack(config: RunConfig, progress: ProgressFn | None = None, *,
               prepared: PreparedRun | None = None, lpips: LPIPSMetric | None = None,
               trust_code: bool = False) -> AuditResult:
    """Run one full audit cell and score it against the private batch (``trust_code``: see :func:`prepare`)."""
    run = prepared or prepare(config, trust_code=trust_code)
    t0 = time.perf_counter()
    observation, images, labels = observe(run)
    t1 = time.perf_counter()
    rec = run.attack.reconstruct(observation, progress=progress)
    t2 = time.perf_counter()
    scores = score_reconstruction(rec.images, images, true_labels=labels, predicted_labels=rec.labels, lpips=lpips)
    tuning = selection_regret(rec, images, scores.mean_psnr)
    fit = against_flat_image(update_fit(observation, rec.images, rec.labels, images, labels, device=run.device),
                             observation, images, scores.mean_psnr)
    t3 = time.perf_counter()
    return AuditResult(config, observation, rec, images, labels, scores,
                       timings={"observe_s": t1 - t0, "attack_s": t2 - t1, "score_s": t3 - t2},
                       defenses=list(observation.defenses), tuning=tuning, fit=fit)


def selection_regret(rec: Reconstruction, truth: torch.Tensor, selected_psnr: float) -> dict | None:
    """Score what every candidate of a self-tuning attack reached (its best iterate, or its state when it was
    pruned) against the truth: the regret is the best candidate's mean PSNR minus the selected one's. The
    attack chose without the truth; this only measures how well it chose."""
    if not rec.candidates:
        return None
    per = {int(k): float(score_reconstruction(images, truth).mean_psnr) for k, (images, _) in rec.candidates.items()}
    best = max(per.values())
    return {"candidate_psnr": per, "selected_psnr": float(selected_psnr), "best_candidate_psnr": best,
            "regret_db": best - float(selected_psnr)}


def attack_observation(observation: Observation, attack: Attack, progress: ProgressFn | None = None) -> Reconstruction:
    """Attack an update captured elsewhere (no ground truth, so no scores)."""
    return attack.reconstruct(observation, progress=progress)

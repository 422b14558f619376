"""What an audit of a deployment runs, step by step, each step resumable from the files it leaves.

1. **The data** (:func:`split_data`): the clients' private pool and the server's public part. A dataset whose
   deployment names ``data.public_split`` uses that split as the public part; otherwise a class-balanced share
   ``data.public`` of the private split is carved out (seeded), so the two never share an image.
2. **The victim** (:func:`prepare_victim`): the user's weights (checked against the model, one line when they do
   not fit), or a victim the audit trains on the public part (``model.train``) and saves as
   ``victim.safetensors`` with its recipe in ``victim.json``; a rerun with the same recipe reuses it.
3. **The risk ranking** (:func:`rank_risk`): ``audit.rank`` class-balanced samples of the private pool ranked by
   the loss-aware vulnerability proxies and the gradient norm under the victim (seed 000: a larger lambda_max
   is a sharper minimum at the truth, an easier inversion); the ``at_risk`` highest and the ``typical`` closest
   to the median are audited. ``risk.json`` (the report adds ``risk.csv``); reused when the settings match.
4. **The attacks** (:func:`audit_sweep`): a sweep over the candidate defenses whose private batches are the
   audited samples, each at position 0 of a client batch of ``clients.samples`` filled with other private samples
   (class-balanced, seeded), run into the audit folder's results store (resumable, as ``gradaudit evaluate``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ...data import load_dataset
from ...data.base import ImageDataset
from ...data.sampling import class_spread
from ...errors import ConfigError
from ...models.registry import ModelSpec, build_model
from ...models.weights import check_weights, load_weights, read_weights
from ...attacks.registry import attack_threat
from ...proxies.lavp import check_proxy_options, compute_proxies
from ...threat.threat_model import ThreatModel, applies
from ..sweep import AttackEntry, SweepConfig, parse_sweep
from ..victims import write_victim
from .config import Deployment

VICTIM_FILE = "victim.safetensors"
RISK_FILE = "risk.json"
#: the share of the time budget given to the attacks (the rest: victim, ranking, utility, report)
ATTACK_SHARE = 0.6
#: relative tolerance of the ranking's lambda_max (a ranking needs the order, not four digits)
RISK_TOL = 1e-2
#: the matching attacks, whose run length a time budget can set
BUDGETED = ("inverting-gradients", "fedavg-leakage")


@dataclass
class DataPlan:
    """The private split, its public part (indices into ``public_set``) and the private pool (into ``private``)."""

    private: ImageDataset
    public_set: ImageDataset
    public: list[int]
    pool: list[int]
    public_split: str


@dataclass
class RiskRanking:
    rows: list[dict[str, Any]]
    proxy: str
    at_risk: list[int]
    typical: list[int]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def audited(self) -> list[int]:
        return [*self.at_risk, *self.typical]

    def role(self, index: int) -> str:
        return "most at risk" if index in self.at_risk else "typical"


def _read_json(path: Path) -> dict[str, Any]:
    """A cache file's JSON, or {} when it is missing or unreadable (the step then runs again)."""
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _load(dep: Deployment, split: str) -> ImageDataset:
    d = dep.data
    return load_dataset(d.name, root=d.root, split=split, image_size=d.image_size, download=d.download)


def split_data(dep: Deployment) -> DataPlan:
    """Step 1 (no file written): the private pool and the public part, see the module docstring."""
    private = _load(dep, dep.data.split)
    if dep.data.public_split is not None:
        if dep.data.public_split == dep.data.split:
            raise ConfigError("data.public_split names the clients' own split; leave it out to carve a share")
        public_set = _load(dep, dep.data.public_split)
        return DataPlan(private, public_set, list(range(len(public_set))), list(range(len(private))),
                        dep.data.public_split)
    n_public = round(dep.data.public * len(private))
    if n_public < 1 or len(private) - n_public < dep.clients.samples + dep.audit.rank - 1:
        raise ConfigError(f"'{dep.data.name}' ({dep.data.split}) has {len(private)} images: too few to keep a "
                          f"public share of {dep.data.public:g} and {dep.audit.rank} ranked private samples "
                          "in client batches of " + str(dep.clients.samples))
    public = sorted(class_spread(private.labels, n_public, seed=dep.seed))
    taken = set(public)
    pool = [i for i in range(len(private)) if i not in taken]
    return DataPlan(private, private, public, pool, dep.data.split)


def model_spec(dep: Deployment, data: ImageDataset, trust_code: bool = False) -> ModelSpec:
    return ModelSpec(dep.model.name, data.num_classes, data.shape, dict(dep.model.kwargs), trust_code=trust_code)


def check_user_weights(dep: Deployment, spec: ModelSpec) -> Optional[Path]:
    """The deployment's ``model.weights`` resolved and checked against the model (ConfigError, one line)."""
    if dep.model.weights is None:
        return None
    path = Path(dep.model.weights).expanduser().resolve()
    check_weights(build_model(spec), read_weights(path), spec.name, str(dep.model.weights))
    return path


def _victim_recipe(dep: Deployment, plan: DataPlan) -> dict[str, Any]:
    t = dep.model.train
    return {"dataset": plan.public_set.name, "split": plan.public_split, "model": dep.model.name,
            "model_kwargs": dict(dep.model.kwargs), "epochs": t.epochs, "batch_size": t.batch_size, "lr": t.lr,
            "momentum": t.momentum, "seed": dep.seed, "images": len(plan.public)}


def prepare_victim(dep: Deployment, out: Path, plan: DataPlan, spec: ModelSpec, *, trust_code: bool = False,
                   progress: Optional[Callable[[int, int, float], None]] = None) -> tuple[Optional[Path], dict]:
    """Step 2: (weights path or None for a fresh initialisation, what was done). Reuses ``victim.safetensors``
    when ``victim.json`` records the same recipe."""
    user = check_user_weights(dep, spec)
    if user is not None:
        return user, {"source": "user", "path": str(user)}
    if dep.model.train.epochs == 0:
        return None, {"source": "fresh", "seed": dep.seed}
    path, recipe_path = out / VICTIM_FILE, out / "victim.json"
    want = _victim_recipe(dep, plan)
    have = _read_json(recipe_path)
    if path.is_file() and have and all(have.get(k) == v for k, v in want.items()):
        return path, {"source": "trained", "reused": True, **have}
    t = dep.model.train
    indices = None if dep.data.public_split is not None else plan.public
    _, summary = write_victim(path, dataset=dep.data.name, model=dep.model.name, epochs=t.epochs,
                              batch_size=t.batch_size, lr=t.lr, momentum=t.momentum, seed=dep.seed,
                              model_kwargs=dict(dep.model.kwargs), data_root=dep.data.root,
                              split=plan.public_split, image_size=dep.data.image_size, progress=progress,
                              trust_code=trust_code, indices=indices)
    have = json.loads(recipe_path.read_text())
    return path, {"source": "trained", "reused": False, **have}


def _risk_settings(dep: Deployment, victim: Optional[Path], pool: list[int]) -> dict[str, Any]:
    return {"proxy": dep.audit.proxy, "rank": dep.audit.rank, "at_risk": dep.audit.at_risk,
            "typical": dep.audit.typical, "victim": None if victim is None else str(victim),
            "victim_bytes": None if victim is None else victim.stat().st_size, "seed": dep.seed,
            "model": dep.model.name, "model_kwargs": dict(dep.model.kwargs), "dataset": dep.data.name,
            "split": dep.data.split, "pool": pool}


def proxy_sides(proxy: str) -> tuple[str, ...]:
    """The Hessian ends a proxy needs (lambda_min is the costly one; the default ranks by lambda_max)."""
    return ("min",) if proxy.endswith("_min") else ("max",)


def check_risk_options(dep: Deployment) -> None:
    check_proxy_options(proxy=dep.audit.proxy, which=proxy_sides(dep.audit.proxy), tol=RISK_TOL)


def rank_risk(dep: Deployment, out: Path, plan: DataPlan, spec: ModelSpec, victim: Optional[Path],
              progress: Optional[Callable[[int, int], None]] = None) -> RiskRanking:
    """Step 3: rank ``audit.rank`` private samples (see the module docstring); reuses ``risk.json`` when its
    settings match."""
    labels = plan.private.labels[torch.as_tensor(plan.pool)]
    ranked = [plan.pool[i] for i in class_spread(labels, dep.audit.rank, seed=dep.seed + 1)]
    settings = _risk_settings(dep, victim, ranked)
    meta_path = out / RISK_FILE
    saved = _read_json(meta_path)
    if saved.get("settings") == settings:
        return RiskRanking(saved["rows"], dep.audit.proxy, saved["at_risk"], saved["typical"], saved)
    torch.manual_seed(dep.seed)
    net = build_model(spec)
    if victim is not None:
        load_weights(net, victim, spec.name)
    net.eval()
    images, y = plan.private.batch(ranked)
    table = compute_proxies(net, images, y, data=plan.private, indices=ranked, seed=dep.seed, progress=progress,
                            which=proxy_sides(dep.audit.proxy), tol=RISK_TOL)
    rows = table.ranked(dep.audit.proxy, True)
    at_risk = [r["index"] for r in rows[:dep.audit.at_risk]]
    rest = [r for r in rows if r["index"] not in at_risk]
    values = sorted(float(r[dep.audit.proxy]) for r in rest)
    median = values[len(values) // 2] if values else 0.0
    typical = [r["index"] for r in sorted(rest, key=lambda r: abs(float(r[dep.audit.proxy]) - median))]
    typical = typical[:dep.audit.typical]
    meta = {"settings": settings, "rows": rows, "at_risk": at_risk, "typical": typical, "proxy_meta": table.meta}
    meta_path.write_text(json.dumps(meta, indent=1, default=str))
    return RiskRanking(rows, dep.audit.proxy, at_risk, typical, meta)


def audit_batches(dep: Deployment, plan: DataPlan, ranking: RiskRanking) -> list[list[int]]:
    """One client batch per audited sample: the sample first, then ``samples - 1`` other private samples
    (class-balanced, seeded per audited sample, never another audited one)."""
    audited = set(ranking.audited)
    others = [i for i in plan.pool if i not in audited]
    labels = plan.private.labels[torch.as_tensor(others)] if others else torch.zeros(0)
    out = []
    for k, target in enumerate(ranking.audited):
        fill = class_spread(labels, dep.clients.samples - 1, seed=dep.seed * 1000 + 17 * k + 3)
        out.append([target, *(others[i] for i in fill)])
    return out


#: the honest-server closed forms and the victim they apply to (their threat model: ``attack_threat``)
CLOSED_FORMS = {"spear": "mlp", "april": "vit"}


def default_attacks(dep: Deployment) -> list[AttackEntry]:
    """The strongest attacks the deployment's threat model allows (``audit.attacks`` replaces them):
    the self-tuning Inverting Gradients; with minibatch FedAvg also the attack that simulates the client's epochs
    (Dimitrov et al. 2022); the closed forms whose threat model fits the victim (SPEAR on the MLP's first layer,
    APRIL on the ViT at B=1); with ``malicious_server`` Robbing the Fed's imprint module and trap weights (the
    server changes the model, so the victim's weights do not apply); with ``prior`` GIAS on that generator."""
    its = {"iterations": dep.audit.iterations}
    c = dep.clients
    out = []
    if c.protocol == "fedavg" and c.local_batch_size is not None and c.local_batch_size < c.samples:
        out.append(AttackEntry(preset="fedavg-leakage", overrides=dict(its)))
    out.append(AttackEntry(preset="inverting-gradients", overrides=dict(its)))
    threat = ThreatModel(server="honest", labels=c.labels_known, clients=1)
    for name, victim in CLOSED_FORMS.items():
        if dep.model.name == victim and applies(attack_threat(name), threat, victim, c.samples)[0]:
            out.append(AttackEntry(preset=name))
    if dep.audit.malicious_server:
        base_kwargs = dict(dep.model.kwargs)
        out.append(AttackEntry(preset="robbing-the-fed", overrides={
            "model.name": "imprint", "model.weights": None,
            "model.kwargs": {"base": dep.model.name, "bins": 128, "base_kwargs": base_kwargs}}))
        out.append(AttackEntry(preset="trap-weights", overrides={
            "model.name": "trap-weights", "model.weights": None,
            "model.kwargs": {"base": dep.model.name, "neurons": 128, "rate": round(1 / max(c.samples, 2), 4),
                             "base_kwargs": base_kwargs}}))
    if dep.audit.prior is not None:
        out.append(AttackEntry(preset="gias", overrides={**its, "params": {"generator": dep.audit.prior}}))
    return out


def audit_attacks(dep: Deployment) -> list[AttackEntry]:
    """The deployment's attacks: ``audit.attacks`` when given, else :func:`default_attacks`."""
    return list(dep.audit.attacks or default_attacks(dep))


def audit_sweep(dep: Deployment, victim: Optional[Path], batches: list[list[int]],
                attack_budget: Optional[float] = None) -> SweepConfig:
    """Step 4's sweep. ``attack_budget``: seconds per matching-attack cell (from the deployment's time budget;
    it replaces the iteration count)."""
    d = dep.data
    data = {"name": d.name, "split": d.split}
    data.update({k: v for k, v in (("root", d.root), ("image_size", d.image_size)) if v is not None})
    model = {"name": dep.model.name, "kwargs": dict(dep.model.kwargs)}
    if victim is not None:
        model["weights"] = str(victim)
    attacks = audit_attacks(dep)
    if attack_budget is not None:
        attacks = [AttackEntry(preset=a.preset, name=a.name,
                               overrides={**a.overrides, "time_budget": round(attack_budget, 1)})
                   if a.preset in BUDGETED else a for a in attacks]
    return parse_sweep({"base": {"data": data, "model": model, "threat": dep.clients.threat(), "seed": dep.seed},
                        "attacks": [a.model_dump(exclude_none=True) for a in attacks],
                        "defenses": dep.defenses, "batches": batches, "retries": 1})


def attack_budget(dep: Deployment, cells: int) -> Optional[float]:
    """Seconds per attack cell: :data:`ATTACK_SHARE` of the time budget, spread over the cells the workers run."""
    if dep.time_budget is None or cells < 1:
        return None
    return max(2.0, ATTACK_SHARE * dep.time_budget * dep.workers / cells)


__all__ = ["ATTACK_SHARE", "DataPlan", "RISK_FILE", "RiskRanking", "VICTIM_FILE", "attack_budget",
           "audit_attacks", "audit_batches", "audit_sweep", "check_risk_options", "check_user_weights", "default_attacks",
           "model_spec", "prepare_victim", "rank_risk", "split_data"]

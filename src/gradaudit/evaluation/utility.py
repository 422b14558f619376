"""Utility of a defense: train a model federatedly with the defense on and report what it cost (seed 002 Table 5).

The simulation reuses the client update path of the audit: every client is a :class:`~gradaudit.threat.Client`
with the defenses as its update transforms, so the update that trains the model is exactly the update an attacker
would observe (no second implementation of any defense).

One run, with N clients and R rounds::

    train / test split (deterministic, stratified by class; fixed split seed, independent of ``seed``)
    the training split is dealt into N IID shards (with ``seed``)
    theta <- build_model(spec) under torch.manual_seed(seed)
    for r in 1..R:
        every client draws a minibatch of ``batch_size`` from its shard (without replacement within a pass)
        and shares  u_i = Client(theta, transforms=defenses).share(x_i, y_i).update
        FedSGD: u_i is the (defended) mean gradient,    theta <- theta - lr * mean_i u_i
        FedAvg: u_i = theta - theta_K after K local SGD steps at lr (then defended),  theta <- theta - mean_i u_i

Reported (seed 002 measures utility "by the final loss of the training task"):

* ``final_train_loss``: the mean cross-entropy over the *whole* training split at the end (eval mode);
* ``test_accuracy``: top-1 accuracy on the held-out split;
* ``curve``: (round, training loss) at round 0 and every ``eval_every`` rounds, and at the end.

A defense strong enough to make training diverge (an update or the model turns NaN/inf, e.g. heavy noise at a
large learning rate) is a result too: training stops there, ``diverged_at`` records the round, the final loss is
inf (stored as NULL, shown as "diverged") and no accuracy is reported.

Models with batch norm: clients train copies, so the server model's running statistics never move; before each
evaluation they are re-estimated on the training split (cumulative average over one pass in train mode), as a
server would calibrate a model before deployment.

The embedded set (64 images, 8 photos x 8 crops) has no separate test split: 6 crops per photo train, 2 test
(48 / 16). Datasets with a real test split (Fashion-MNIST, CIFAR) use stratified subsets of both, by default
2000 training and 1000 test images, which keeps a run well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageDataset, load_dataset
from ..data.registry import splits_share_images
from ..defenses.registry import parse_defense
from ..errors import ConfigError, ObservationError
from ..models.registry import ModelSpec, build_model
from ..models.weights import check_weights, load_weights, read_weights
from ..threat.client import Client, ServerKnowledge, batchnorm_layers
from ..threat.local_training import LocalTraining
from ..threat.observation import DataSpec
from .store import ResultsStore, UtilityRow
# the labels the sweep writes into ``cells.defense``: utility rows use the same ones, so that they join
from .sweep import defense_label
from .sweep import spec_list as _as_spec_list
from ..checks import finite_or_none

#: Defaults, sized so that one embedded-set LeNet run takes a few seconds on 2 CPU cores.
DEFAULT_CLIENTS = 4
DEFAULT_ROUNDS = 300
DEFAULT_BATCH_SIZE = 8
DEFAULT_LR = 0.1
#: what ``local=`` may set of the FedAvg clients' local SGD (keyword arguments of Client)
LOCAL_KEYS = ("local_epochs", "local_batch_size", "momentum", "weight_decay")
#: Datasets with a real test split: subset sizes used when none are given.
DEFAULT_TRAIN_SUBSET = 2000
DEFAULT_TEST_SUBSET = 1000
#: Datasets without a test split: the fraction of every class held out for testing.
HOLDOUT_FRACTION = 0.25
#: The train/test split and the subsets use this seed, so every run of a study sees the same data.
SPLIT_SEED = 0

ProgressFn = Callable[[int, int, float], None]


@dataclass
class UtilityResult:
    """What one federated training run with a defense cost."""

    defense: str
    final_train_loss: float
    test_accuracy: float
    seconds: float
    curve: list[tuple[int, float]]
    config: dict[str, Any] = field(default_factory=dict)
    #: the round at which training diverged (an update or the model went NaN/inf), None if it did not
    diverged_at: Optional[int] = None

    @property
    def initial_train_loss(self) -> float:
        return self.curve[0][1]


# ------------------------------------------------------------------------------------------------- the data
def _stratified_pick(labels: torch.Tensor, fraction: float | None, count: int | None,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (picked, rest), taking the same share of every class (deterministic in generator).

    ``count`` picks that many in all (classes in proportion, remainders to the largest classes first);
    ``fraction`` picks round(fraction * n_c) of every class c (at least 1 when a class has 2 or more).
    """
    classes = torch.unique(labels).tolist()
    per_class = {c: (labels == c).nonzero().flatten() for c in classes}
    per_class = {c: idx[torch.randperm(len(idx), generator=generator)] for c, idx in per_class.items()}
    n = len(labels)
    if count is not None:
        count = max(0, min(count, n))
        exact = {c: count * len(idx) / n for c, idx in per_class.items()}
        take = {c: int(math.floor(v)) for c, v in exact.items()}
        left = count - sum(take.values())
        for c in sorted(classes, key=lambda c: (-(exact[c] - take[c]), c))[:left]:
            take[c] += 1
    else:
        take = {c: (min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0)
                for c, idx in per_class.items()}
    picked = [idx[:take[c]] for c, idx in per_class.items()]
    rest = [idx[take[c]:] for c, idx in per_class.items()]
    cat = lambda parts: torch.sort(torch.cat(parts))[0] if parts else torch.zeros(0, dtype=torch.int64)
    return cat(picked), cat(rest)


def load_splits(dataset: str = "embedded", data_root: str | None = None, train_size: int | None = None,
                test_size: int | None = None, image_size: int | None = None) -> tuple[ImageDataset, ImageDataset]:
    """The (train, test) datasets of a utility run (deterministic; see the module docstring)."""
    for name, v in (("train_size", train_size), ("test_size", test_size)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    train = load_dataset(dataset, root=data_root, split="train", image_size=image_size)
    test = load_dataset(dataset, root=data_root, split="test", image_size=image_size)
    g = torch.Generator().manual_seed(SPLIT_SEED)
    same = splits_share_images(dataset, data_root)
    if same:  # an evaluation set without a test split: hold out a stratified share of every class
        held, kept = _stratified_pick(train.labels, HOLDOUT_FRACTION, None, g)
        train, test = train.subset(kept), train.subset(held)
        if train_size is not None or test_size is not None:
            if train_size is not None and train_size > len(train):
                raise ConfigError(f"train_size {train_size} exceeds the {len(train)} training images of "
                                  f"'{dataset}'")
            if test_size is not None and test_size > len(test):
                raise ConfigError(f"test_size {test_size} exceeds the {len(test)} test images of '{dataset}'")
    else:
        train_size = DEFAULT_TRAIN_SUBSET if train_size is None else train_size
        test_size = DEFAULT_TEST_SUBSET if test_size is None else test_size
    if train_size is not None and train_size < len(train):
        train = train.subset(_stratified_pick(train.labels, None, train_size, g)[0])
    if test_size is not None and test_size < len(test):
        test = test.subset(_stratified_pick(test.labels, None, test_size, g)[0])
    if len(test) == 0:
        raise ConfigError(f"dataset '{dataset}' is too small to hold out a test split")
    return train, test


# ------------------------------------------------------------------------------------------- the training
def _evaluate(model: nn.Module, data: ImageDataset, chunk: int = 500) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) of ``model`` over all of ``data``, in eval mode."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), chunk):
            x, y = data.batch(range(start, min(start + chunk, len(data))))
            logits = model(data.normalize(x))
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    return total_loss / len(data), correct / len(data)


def _calibrated(model: nn.Module, data: ImageDataset, chunk: int = 500) -> nn.Module:
    """For a model with batch norm: a copy whose running statistics are re-estimated on ``data``."""
    if not batchnorm_layers(model):
        return model
    m = copy.deepcopy(model)
    for bn in batchnorm_layers(m):
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the pass
    m.train()
    with torch.no_grad():
        for start in range(0, len(data), chunk):
            x, _ = data.batch(range(start, min(start + chunk, len(data))))
            m(data.normalize(x))
    return m


class _Shard:
    """A client's training indices, served as minibatches without replacement within each pass."""

    def __init__(self, indices: torch.Tensor, generator: torch.Generator) -> None:
        self.indices, self.generator = indices, generator
        self.order: list[int] = []

    def next(self, batch_size: int) -> list[int]:
        out: list[int] = []
        while len(out) < min(batch_size, len(self.indices)):
            if not self.order:
                self.order = self.indices[torch.randperm(len(self.indices), generator=self.generator)].tolist()
            out.append(self.order.pop())
        return out


def _check(name: str, value, minimum, kind=int) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        ok = ok and isinstance(value, int)
    if not ok or value < minimum or (kind is float and value <= 0):
        raise ConfigError(f"{name} must be {'an integer >= ' + str(minimum) if kind is int else 'a positive number'}"
                          f", got {value!r}")


def utility_config(defense_specs: str | Sequence[str] | None, dataset: str = "embedded", model: str = "lenet",
                   model_kwargs: dict | None = None, clients: int = DEFAULT_CLIENTS, rounds: int = DEFAULT_ROUNDS,
                   batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR, protocol: str = "fedsgd",
                   local_steps: int = 1, seed: int = 0, data_root: str | None = None,
                   train_size: int | None = None, test_size: int | None = None, weights: str | None = None,
                   local: dict | None = None, image_size: int | None = None) -> dict[str, Any]:
    """The full, JSON-ready description of a utility run (what its key is a hash of; the options added later,
    ``weights``, ``local`` and ``image_size``, only when set, so older keys stay valid)."""
    specs = _as_spec_list(defense_specs)
    transforms = [parse_defense(s) for s in specs]
    later = {k: v for k, v in (("weights", None if weights is None else str(weights)),
                               ("local", None if not local else dict(sorted(local.items()))),
                               ("image_size", image_size)) if v is not None}
    return {**later, "defense": defense_label([t.describe() for t in transforms]),
            "defenses": [t.describe() for t in transforms], "dataset": dataset, "model": model,
            "model_kwargs": dict(model_kwargs or {}), "clients": clients, "rounds": rounds,
            "batch_size": batch_size, "lr": lr, "protocol": protocol,
            "local_steps": local_steps if protocol == "fedavg" else 1, "seed": seed,
            "data_root": None if data_root is None else str(data_root), "train_size": train_size,
            "test_size": test_size, "split_seed": SPLIT_SEED}


#: arguments of :func:`measure_utility` that do not change its result (so not part of a run's key)
_NOT_IN_KEY = ("progress", "eval_every", "threads", "trust_code")


def utility_key(defense_specs: str | Sequence[str] | None, **kwargs) -> str:
    """A stable, readable key of a utility run: ``utility/<defense>/<dataset>/<model>/<hash of the config>``.

    Takes the same arguments as :func:`measure_utility` (``progress``, ``eval_every``, ``threads`` do not matter).
    """
    kwargs = {k: v for k, v in kwargs.items() if k not in _NOT_IN_KEY}
    cfg = utility_config(defense_specs, **kwargs)
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"utility/{cfg['defense']}/{cfg['dataset']}/{cfg['model']}/{digest}"


def measure_utility(defense_specs: str | Sequence[str] | None, dataset: str = "embedded", model: str = "lenet",
                    model_kwargs: dict | None = None, clients: int = DEFAULT_CLIENTS, rounds: int = DEFAULT_ROUNDS,
                    batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR, protocol: str = "fedsgd",
                    local_steps: int = 1, seed: int = 0, data_root: str | None = None,
                    train_size: int | None = None, test_size: int | None = None,
                    progress: Optional[ProgressFn] = None, eval_every: int | None = None,
                    threads: int | None = 1, trust_code: bool = False, weights: str | None = None,
                    local: dict | None = None, image_size: int | None = None) -> UtilityResult:
    """Train ``model`` federatedly on ``dataset`` with the defense chain ``defense_specs`` on every client.

    ``defense_specs``: a list of specs applied in order (``[]``, ``None`` or ``["none"]``: no defense), or one
    string (``"dpsgd:1,1.1 + prune:0.9"``). FedSGD: ``lr`` is the server's step on the mean (defended) gradient;
    FedAvg: ``lr`` is the clients' local step size over ``local_steps`` steps, and the server applies the mean
    update. ``local``: the clients' local SGD beyond ``local_steps`` (FedAvg; keys ``local_epochs``,
    ``local_batch_size``, ``momentum``, ``weight_decay`` of :class:`~gradaudit.threat.Client`): each client then
    takes ``batch_size`` samples per round and trains on them in minibatches. ``weights``: start from these
    weights (safetensors, e.g. the audited round's model) instead of a fresh initialisation; ``image_size``:
    resize the images. ``progress(round, rounds, train_loss)`` is called at every evaluation. Deterministic in
    ``seed``.
    ``threads``: torch threads during the run (default 1: the tensors are tiny, and on a busy 2-core machine
    two threads spin-wait on each other, measured 20x slower; None leaves the setting alone). ``trust_code``:
    ``model`` may be a ``package.module:factory`` the caller trusts (:mod:`gradaudit.trust`).
    See the module docstring for the protocol and what is reported.
    """
    before = torch.get_num_threads()
    if threads is not None:
        _check("threads", threads, 1)
        torch.set_num_threads(threads)
    try:
        return _measure(defense_specs, dataset, model, model_kwargs, clients, rounds, batch_size, lr, protocol,
                        local_steps, seed, data_root, train_size, test_size, progress, eval_every, trust_code,
                        {"weights": weights, "local": local, "image_size": image_size})
    finally:
        torch.set_num_threads(before)


def check_utility_args(defense_specs, *, clients: int = DEFAULT_CLIENTS, rounds: int = DEFAULT_ROUNDS,
                       batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR, protocol: str = "fedsgd",
                       local_steps: int = 1, seed: int = 0, eval_every: int | None = None,
                       train_size: int | None = None, test_size: int | None = None, local: dict | None = None,
                       **_: Any) -> None:
    """Check a utility run's arguments (not its data or model) without doing any work; ConfigError if bad."""
    _check("clients", clients, 1)
    _check("rounds", rounds, 1)
    _check("batch_size", batch_size, 1)
    _check("local_steps", local_steps, 1)
    _check("lr", lr, 0, float)
    _check("seed", seed, 0)
    for name, size in (("train_size", train_size), ("test_size", test_size)):
        if size is not None:
            _check(name, size, 1)
    if eval_every is not None:
        _check("eval_every", eval_every, 1)
    if protocol not in ("fedsgd", "fedavg"):
        raise ConfigError(f"unknown protocol '{protocol}'; valid: fedavg, fedsgd")
    if local:
        unknown = sorted(set(local) - set(LOCAL_KEYS))
        if unknown or protocol != "fedavg":
            raise ConfigError(f"local training options are FedAvg's: {', '.join(LOCAL_KEYS)}"
                              + (f" (got '{unknown[0]}')" if unknown else " (set protocol fedavg)"))
        LocalTraining(lr, steps=local_steps, epochs=local.get("local_epochs", 1),
                      batch_size=local.get("local_batch_size"), momentum=local.get("momentum", 0.0),
                      weight_decay=local.get("weight_decay", 0.0))
    for s in _as_spec_list(defense_specs):
        parse_defense(s)


def prepare_utility(defense_specs, dataset: str = "embedded", model: str = "lenet", model_kwargs: dict | None = None,
                    data_root: str | None = None, train_size: int | None = None, test_size: int | None = None,
                    trust_code: bool = False, weights: str | None = None, image_size: int | None = None,
                    **kwargs: Any) -> tuple[ImageDataset, ImageDataset, ModelSpec]:
    """Everything of a utility run that can fail on bad input, before any training: the arguments, the data
    splits, the model (built once) and the weights it starts from. Returns (train, test, model spec)."""
    check_utility_args(defense_specs, train_size=train_size, test_size=test_size, **kwargs)
    train, test = load_splits(dataset, data_root, train_size, test_size, image_size)
    clients = kwargs.get("clients", DEFAULT_CLIENTS)
    if clients > len(train):
        raise ConfigError(f"{clients} clients but only {len(train)} training images")
    spec = ModelSpec(model, train.num_classes, train.shape, dict(model_kwargs or {}), trust_code=trust_code)
    net = build_model(spec)
    if weights is not None:
        check_weights(net, read_weights(weights), spec.name, weights)
    return train, test, spec


def _measure(defense_specs, dataset, model, model_kwargs, clients, rounds, batch_size, lr, protocol, local_steps,
             seed, data_root, train_size, test_size, progress, eval_every, trust_code, later) -> UtilityResult:
    t0 = time.perf_counter()
    cfg = utility_config(defense_specs, dataset=dataset, model=model, model_kwargs=model_kwargs, clients=clients,
                         rounds=rounds, batch_size=batch_size, lr=lr, protocol=protocol, local_steps=local_steps,
                         seed=seed, data_root=data_root, train_size=train_size, test_size=test_size, **later)
    weights, local = later["weights"], dict(later["local"] or {})
    train, test, spec = prepare_utility(defense_specs, dataset, model, model_kwargs, data_root, train_size,
                                        test_size, trust_code, weights, later["image_size"], clients=clients,
                                        rounds=rounds, batch_size=batch_size, lr=lr, protocol=protocol,
                                        local_steps=local_steps, seed=seed, eval_every=eval_every, local=local)
    if eval_every is None:
        eval_every = max(1, rounds // 20)
    transforms = [parse_defense(s) for s in _as_spec_list(defense_specs)]
    torch.manual_seed(seed)
    global_model = build_model(spec)
    if weights is not None:
        load_weights(global_model, weights, spec.name)
    data_spec = DataSpec(train.name, tuple(train.mean), tuple(train.std))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=g)
    shards = [_Shard(order[i::clients], torch.Generator().manual_seed(seed * 1009 + 17 * i + 1))
              for i in range(clients)]
    # One Client per participant, all holding the server's model (share() trains a private copy); each has its
    # own generator, so noise draws differ between clients and rounds but repeat for the same seed.
    participants = [Client(global_model, spec, data_spec, protocol=protocol, local_steps=local_steps,
                           local_lr=lr if protocol == "fedavg" else None, transforms=transforms,
                           knowledge=ServerKnowledge(labels=False), seed=seed * 7919 + i + 1, **local)
                    for i in range(clients)]
    params = dict(global_model.named_parameters())

    def loss_now() -> tuple[float, float]:
        return _evaluate(_calibrated(global_model, train), train)

    curve = [(0, loss_now()[0])]
    if progress:
        progress(0, rounds, curve[0][1])
    diverged_at = None
    for r in range(1, rounds + 1):
        total = {k: torch.zeros_like(p) for k, p in params.items()}
        try:
            for client, shard in zip(participants, shards):
                images, labels = train.batch(shard.next(batch_size))
                update = client.share(images, labels).update
                for k in total:
                    total[k] += update[k]
        except ObservationError:  # a client's update went NaN/inf: training diverged (a result, not an error)
            diverged_at = r
            break
        step = lr if protocol == "fedsgd" else 1.0
        with torch.no_grad():
            for k, p in params.items():
                p.sub_(step * total[k] / clients)
        if not all(bool(torch.isfinite(p).all()) for p in params.values()):
            diverged_at = r
            break
        if r % eval_every == 0 or r == rounds:
            curve.append((r, loss_now()[0]))
            if progress:
                progress(r, rounds, curve[-1][1])
    cfg.update({"train_images": len(train), "test_images": len(test)})
    if diverged_at is not None:
        # the defense destroyed training: no finite loss and no meaningful accuracy to report
        curve.append((diverged_at, float("inf")))
        if progress:
            progress(rounds, rounds, float("inf"))
        cfg["diverged_at_round"] = diverged_at
        return UtilityResult(defense=cfg["defense"], final_train_loss=float("inf"), test_accuracy=float("nan"),
                             seconds=time.perf_counter() - t0, curve=curve, config=cfg, diverged_at=diverged_at)
    final_model = _calibrated(global_model, train)
    final_loss, _ = _evaluate(final_model, train)
    _, accuracy = _evaluate(final_model, test)
    return UtilityResult(defense=cfg["defense"], final_train_loss=final_loss, test_accuracy=accuracy,
                         seconds=time.perf_counter() - t0, curve=curve, config=cfg)


# ------------------------------------------------------------------------------------------- the store
def utility_row(key: str, result: UtilityResult) -> UtilityRow:
    cfg = dict(result.config)
    cfg["curve"] = [[int(r), finite_or_none(l)] for r, l in result.curve]
    return UtilityRow(key=key, defense=result.defense, dataset=cfg["dataset"], model=cfg["model"],
                      final_train_loss=finite_or_none(result.final_train_loss), test_accuracy=finite_or_none(result.test_accuracy),
                      seconds=result.seconds, config=cfg)


def store_utility(store: ResultsStore, defenses: Iterable[str | Sequence[str] | None], *,
                  baseline: bool = True, on_start: Optional[Callable[[str, str], None]] = None,
                  progress: Optional[ProgressFn] = None, **kwargs) -> list[tuple[UtilityRow, bool]]:
    """Measure every defense chain in ``defenses`` and add it to ``store``'s utility table.

    Keys already stored are skipped (their stored row is returned). With ``baseline`` (default) the
    no-defense run is measured too, first, since utility loss is measured against it. ``kwargs`` are
    :func:`measure_utility`'s. Returns ``(row, newly_measured)`` per defense chain, baseline first.
    Every spec is validated before any training starts.
    """
    unique = utility_chains(defenses, baseline, **kwargs)
    stored = {row.key: row for row in store.utility()}
    out = []
    for chain in unique:
        key = utility_key(chain, **kwargs)
        if key in stored:
            out.append((stored[key], False))
            continue
        if on_start:
            on_start(key, defense_label(chain))
        result = measure_utility(chain, progress=progress, **kwargs)
        row = utility_row(key, result)
        store.add_utility(row)
        out.append((row, True))
    return out


def utility_chains(defenses: Iterable[str | Sequence[str] | None], baseline: bool = True,
                   **kwargs: Any) -> list[list[str]]:
    """The distinct defense chains to measure (the baseline first), after checking every argument, the data
    and the model (:func:`prepare_utility`): nothing is trained or written here."""
    chains = [_as_spec_list(d) for d in defenses]
    if baseline and not any(not c for c in chains):
        chains.insert(0, [])
    seen, unique = set(), []
    for c in chains:
        label = defense_label(c)  # validates the specs
        if label not in seen:
            seen.add(label)
            unique.append(c)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("progress", "threads")}
    for c in unique:
        check_utility_args(c, **kwargs)
    prepare_utility(unique[0] if unique else [], **kwargs)
    return unique


def run_utility(run_dir: str | Path, defenses: Iterable[str | Sequence[str] | None], *, baseline: bool = True,
                on_start: Optional[Callable[[str, str], None]] = None, progress: Optional[ProgressFn] = None,
                **kwargs: Any) -> list[tuple[UtilityRow, bool]]:
    """:func:`store_utility` into ``run_dir``'s results store, after every check (arguments, data, model, the
    folder and its store) has passed: bad input creates no folder and no store."""
    from ..checks import check_run_dir

    defenses = list(defenses)
    utility_chains(defenses, baseline, **kwargs)
    run_dir = check_run_dir(run_dir, create=True)
    with ResultsStore(run_dir) as store:
        return store_utility(store, defenses, baseline=baseline, on_start=on_start, progress=progress, **kwargs)


def result_dict(result: UtilityResult) -> dict[str, Any]:
    return asdict(result)

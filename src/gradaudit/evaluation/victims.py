"""Trained victims: the model a client receives mid-training, not a fresh initialisation.

An attack against a freshly initialised network measures a situation that lasts one round. Federated training
runs for hundreds; the server then broadcasts a network that already fits the data, whose gradients (small,
with saturated BN statistics) differ from a fresh one's. :func:`train_victim` trains a registered (or trusted)
architecture on a dataset split for some epochs with SGD and momentum (minibatches, BN in training mode, the
usual recipe), and :func:`write_victim` saves its state dict as safetensors for ``model.weights`` of a run
config (:mod:`gradaudit.models.weights`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..checks import check_int, check_number, check_output_dir
from ..data import load_dataset
from ..errors import ConfigError
from ..models.registry import ModelSpec, build_model
from ..models.weights import save_weights

#: (epochs done, epochs total, mean training loss of the last epoch)
EpochProgress = Callable[[int, int, float], None]


@dataclass
class VictimSummary:
    dataset: str
    split: str
    model: str
    model_kwargs: dict[str, Any]
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    seed: int
    images: int
    final_loss: float
    final_accuracy: float
    seconds: float


def train_victim(dataset: str = "embedded", model: str = "convnet", *, epochs: int = 5, batch_size: int = 16,
                 lr: float = 0.05, momentum: float = 0.9, seed: int = 0, model_kwargs: dict | None = None,
                 data_root: str | None = None, split: str = "train", image_size: int | None = None,
                 progress: Optional[EpochProgress] = None, trust_code: bool = False,
                 indices: Sequence[int] | None = None):
    """Train ``model`` on ``dataset[split]`` (only its ``indices`` when given, e.g. the public part a server
    holds) for ``epochs`` epochs; returns (model, :class:`VictimSummary`).

    Deterministic in ``seed`` (initialisation and minibatch order). The model is the same architecture an
    attack cell builds (classes and input shape from the dataset)."""
    check_int(epochs, "epochs", 1)
    check_int(batch_size, "batch_size", 1)
    check_number(lr, "lr", positive=True)
    check_number(momentum, "momentum", minimum=0.0, maximum=0.999)
    ds = load_dataset(dataset, root=data_root, split=split, image_size=image_size)
    if indices is not None:
        bad = [i for i in indices if not 0 <= int(i) < len(ds)]
        if bad or not indices:
            raise ConfigError(f"training indices must be a non-empty list within the {len(ds)} samples of "
                              f"'{dataset}' ({split}), got {bad[:1] or 'none'}")
        ds = ds.subset(torch.as_tensor([int(i) for i in indices]))
    spec = ModelSpec(model, ds.num_classes, ds.shape, dict(model_kwargs or {}), trust_code=trust_code)
    torch.manual_seed(seed)
    net = build_model(spec)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    x_all, y_all = ds.batch(list(range(len(ds))))
    x_all = ds.normalize(x_all)
    t0 = time.perf_counter()
    loss_epoch, acc = float("nan"), float("nan")
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(ds), generator=g)
        losses, correct = [], 0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules()):
                continue  # BN cannot train on a batch of one
            logits = net(x_all[idx])
            loss = F.cross_entropy(logits, y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            correct += int((logits.argmax(1) == y_all[idx]).sum())
        loss_epoch = sum(losses) / max(1, len(losses))
        acc = correct / len(ds)
        if not math.isfinite(loss_epoch):
            raise ConfigError(f"training diverged at epoch {epoch + 1} (loss {loss_epoch}); lower lr")
        if progress is not None:
            progress(epoch + 1, epochs, loss_epoch)
    net.eval()
    summary = VictimSummary(ds.name, split, model, dict(model_kwargs or {}), epochs, batch_size, lr, momentum,
                            seed, len(ds), loss_epoch, acc, time.perf_counter() - t0)
    return net, summary


def write_victim(out: str | Path, **kwargs: Any) -> tuple[Path, VictimSummary]:
    """:func:`train_victim`, then save the weights to ``out`` (``.safetensors``) and the recipe beside them
    (``.json``). ``out``'s folder is checked before any training."""
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    check_output_dir(out.parent if str(out.parent) else Path("."), "--out")
    net, summary = train_victim(**kwargs)
    path = save_weights(net, out)
    out.with_suffix(".json").write_text(json.dumps({"format": "gradaudit-victim", **asdict(summary)}, indent=2))
    return path, summary


__all__ = ["VictimSummary", "train_victim", "write_victim"]

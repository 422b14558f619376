"""Opacus' DP-SGD against gradaudit's own, noise off: the clipped updates must agree (target: < 1e-5).

For each model and protocol the clipping norm is the median per-sample gradient norm of the batch (8
embedded images), so half the samples are clipped. Prints the largest absolute difference of the updates,
the largest update entry (for scale) and the time of each client.

    OMP_NUM_THREADS=1 python examples/flower_audit/opacus_agreement.py
"""

import time

import torch

from gradaudit.data import load_dataset
from gradaudit.defenses import DPSGD
from gradaudit.defenses.dpsgd import per_sample_gradients
from gradaudit.integrations.opacus import OpacusClient
from gradaudit.models.registry import ModelSpec, build_model
from gradaudit.threat.client import Client
from gradaudit.threat.observation import DataSpec

torch.set_num_threads(1)
ds = load_dataset("embedded")
data = DataSpec(ds.name, tuple(ds.mean), tuple(ds.std))
images, labels = ds.batch([0, 9, 18, 27, 36, 45, 54, 63])
for name, protocol in [("lenet", "fedsgd"), ("lenet", "fedavg"), ("mlp", "fedsgd"), ("mlp", "fedavg"),
                       ("convnet", "fedsgd")]:
    spec = ModelSpec(name, ds.num_classes, ds.shape, {"norm": "none"} if name == "convnet" else {})
    torch.manual_seed(1)
    model = build_model(spec)
    per = per_sample_gradients(model, Client(model, spec, data).normalize(images), labels)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per.values()))
    clip = float(norms.median())
    kw = dict(protocol=protocol, local_steps=3 if protocol == "fedavg" else 1,
              local_lr=0.05 if protocol == "fedavg" else None)
    dp = DPSGD(clip, 0.0)
    t = time.perf_counter()
    ours = Client(model, spec, data, transforms=[dp], **kw).share(images, labels)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    theirs = OpacusClient(model, spec, data, dp=dp, **kw).share(images, labels)
    t_theirs = time.perf_counter() - t
    diff = max(float((ours.update[k] - theirs.update[k]).abs().max()) for k in ours.update)
    scale = max(float(ours.update[k].abs().max()) for k in ours.update)
    print(f"{name:8s} {protocol:7s} B=8 clipped {int((norms > clip).sum())}/8 max|diff| {diff:.2e} "
          f"max|update| {scale:.3g} own {t_ours:.2f}s opacus {t_theirs:.2f}s")

"""A malicious model that asks to be centred on public data is centred by the server in the audit cell, on images
outside the private batch; the attacker then reads the centre from the observation's buffers."""

from __future__ import annotations

import pytest
import torch

from gradaudit.config import parse_config
from gradaudit.evaluation.cell import observe, prepare


@pytest.fixture(autouse=True, scope="module")
def _single_thread(single_thread):
    yield


def test_wide_head_is_centred_on_images_outside_the_private_batch():
    cfg = parse_config({"data": {"name": "embedded", "image_size": 16},
                        "model": {"name": "wide-head", "kwargs": {"backbone": "lenet", "width": 64,
                                                                 "centre_on_public": True}},
                        "threat": {"batch_size": 2}, "attack": {"preset": "tensor-features"}})
    run = prepare(cfg)
    obs, images, _ = observe(run)
    centre = obs.buffers["feature_centre"]
    assert float(centre.abs().sum()) > 0
    # it is the mean feature of the other 62 images, not of a set that includes the private batch
    from gradaudit.models import build_model
    torch.manual_seed(cfg.seed)
    model = build_model(run.spec)
    public = [i for i in range(len(run.dataset)) if i not in set(run.indices)]
    with torch.no_grad():
        model.eval()
        expected = model.features(run.dataset.normalize(run.dataset.batch(public)[0])).mean(0)
    torch.testing.assert_close(centre, expected, rtol=1e-5, atol=1e-6)
    # the random rows compute relu(w_j . (h - mu))
    rows = slice(model.first, model.width)
    torch.testing.assert_close(obs.parameters["wide.bias"][rows], -(obs.parameters["wide.weight"][rows] @ centre),
                               rtol=1e-4, atol=1e-5)
    # without the flag nothing is centred
    plain = parse_config({**cfg.model_dump(), "model": {"name": "wide-head",
                                                       "kwargs": {"backbone": "lenet", "width": 64}}})
    obs2, _, _ = observe(prepare(plain))
    assert float(obs2.buffers["feature_centre"].abs().sum()) == 0

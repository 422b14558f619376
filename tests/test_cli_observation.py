"""`gradaudit observation export|inspect|validate` on updates captured outside gradaudit."""

import json

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from gradaudit.cli import main
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Observation

pytestmark = __import__("pytest").mark.usefixtures("single_thread")


def _capture(tmp_path):
    """A 'foreign framework' round: weights before, one local SGD step, weights after."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("lenet", 10, (3, 16, 16)))
    before = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(before, str(tmp_path / "theta0.safetensors"))
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([1, 2])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "thetaK.safetensors"))
    return before, {k: v.detach() for k, v in model.state_dict().items()}


def test_export_then_validate_inspect_and_attack(tmp_path, capsys):
    before, after = _capture(tmp_path)
    args = ["observation", "export", "--out", str(tmp_path / "obs"), "--weights", str(tmp_path / "theta0.safetensors"),
            "--returned", str(tmp_path / "thetaK.safetensors"), "--model", "lenet", "--num-classes", "10",
            "--input-shape", "3,16,16", "--batch-size", "2", "--local-steps", "1", "--local-lr", "0.1"]
    assert main(args) == 0
    obs = Observation.load(tmp_path / "obs.json")
    assert obs.update_kind == "local_update" and obs.batch_size == 2 and obs.local_lr == 0.1
    for k, u in obs.update.items():
        torch.testing.assert_close(u, before[k] - after[k])
    assert main(["observation", "validate", str(tmp_path / "obs.json")]) == 0
    assert main(["observation", "inspect", str(tmp_path / "obs")]) == 0
    assert "fc.weight" in capsys.readouterr().out
    assert main(["attack", "--observation", str(tmp_path / "obs.json"), "--out", str(tmp_path / "rec"),
                 "--attack", "inverting-gradients", "--iterations", "2"]) == 0
    assert (tmp_path / "rec" / "grid.png").is_file()
    # no private batch: the fit is measured against a perfect fit, and two iterations do not get there
    out = capsys.readouterr().out
    assert "no private batch" in out and "under-fit" in out
    fit = json.loads((tmp_path / "rec" / "metrics.json").read_text())["fit"]
    assert fit["truth_measured"] is False and fit["truth"] == 0.0 and fit["underfit"] is True


def test_validate_refuses_tampered_file(tmp_path, capsys):
    _capture(tmp_path)
    main(["observation", "export", "--out", str(tmp_path / "obs"), "--weights", str(tmp_path / "theta0.safetensors"),
          "--returned", str(tmp_path / "thetaK.safetensors"), "--model", "lenet", "--num-classes", "10",
          "--input-shape", "3,16,16", "--batch-size", "2", "--local-lr", "0.1"])
    capsys.readouterr()
    data = bytearray((tmp_path / "obs.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "obs.safetensors").write_bytes(bytes(data))
    assert main(["observation", "validate", str(tmp_path / "obs.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checksum" in err[0]


def test_export_needs_exactly_one_update_source(tmp_path, capsys):
    _capture(tmp_path)
    assert main(["observation", "export", "--out", str(tmp_path / "o"), "--weights", str(tmp_path / "theta0.safetensors"),
                 "--model", "lenet", "--num-classes", "10", "--input-shape", "3,16,16", "--batch-size", "2"]) == 2
    assert "exactly one" in capsys.readouterr().err


def test_export_wrong_architecture_names_tensor(tmp_path, capsys):
    _capture(tmp_path)
    assert main(["observation", "export", "--out", str(tmp_path / "o"), "--weights", str(tmp_path / "theta0.safetensors"),
                 "--gradient", str(tmp_path / "thetaK.safetensors"), "--model", "lenet", "--num-classes", "10",
                 "--input-shape", "3,32,32", "--batch-size", "2"]) == 2
    assert "fc.weight" in capsys.readouterr().err

"""The Observation: validation, check_model, gradient_estimate, and the pickle-free safetensors + JSON format."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch

from gradaudit.errors import ObservationError
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, Observation, ServerKnowledge

from _files import edit_meta, make_legacy

SHAPE = (3, 16, 16)
DATA = DataSpec("toy", (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
LENET = ModelSpec("lenet", 10, SHAPE)
CONVNET = ModelSpec("convnet", 10, SHAPE, {"width": 4})


def _share(spec=CONVNET, protocol="fedsgd", b=3, **kw) -> Observation:
    torch.manual_seed(0)
    model = build_model(spec)
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(b, *SHAPE, generator=g), torch.randint(0, 10, (b,), generator=g)
    extra = dict(local_steps=2, local_lr=0.05) if protocol == "fedavg" else {}
    return Client(model, spec, DATA, protocol=protocol, **extra, **kw).share(images, labels)


@pytest.fixture
def full_obs() -> Observation:
    """A FedAvg observation on a BN network with everything granted, a defense and extras."""
    from gradaudit.defenses import GaussianNoise

    obs = _share(CONVNET, "fedavg", knowledge=ServerKnowledge(labels=True, bn_statistics=True),
                 transforms=[GaussianNoise(0.01)], seed=5)
    # BN statistics are checked bit-exactly below whatever the client recorded; give it a known, full set
    obs.bn_statistics = [(torch.randn(c), torch.rand(c)) for c in (4, 8, 8, 16)]
    obs.extras = {"round": 3, "note": "captured", "nested": {"a": [1, 2.5]}}
    return obs


def _fields(obs: Observation) -> dict:
    return {"model": obs.model, "batch_size": obs.batch_size, "data": obs.data, "update_kind": obs.update_kind,
            "local_steps": obs.local_steps, "local_lr": obs.local_lr, "defenses": obs.defenses, "extras": obs.extras}


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert list(a) == list(b) or set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------- round trip
def test_save_load_round_trip_is_bit_exact(tmp_path, full_obs):
    st, js = full_obs.save(tmp_path / "obs")
    assert st == tmp_path / "obs.safetensors" and js == tmp_path / "obs.json"
    back = Observation.load(tmp_path / "obs")
    _assert_same_tensors(full_obs.parameters, back.parameters)
    _assert_same_tensors(full_obs.update, back.update)
    _assert_same_tensors(full_obs.buffers, back.buffers)
    assert set(back.parameters) == {k for k, _ in build_model(CONVNET).named_parameters()}
    assert "features.1.running_mean" in back.buffers and "features.1.num_batches_tracked" in back.buffers
    assert back.labels.dtype == torch.int64 and torch.equal(back.labels, full_obs.labels)
    assert len(back.bn_statistics) == 4
    for (m1, v1), (m2, v2) in zip(full_obs.bn_statistics, back.bn_statistics):
        assert torch.equal(m1, m2) and torch.equal(v1, v2)
    assert _fields(back) == _fields(full_obs)
    assert back.local_lr == 0.05 and back.local_steps == 2 and back.update_kind == "local_update"
    assert back.defenses == ["noise:0.01"]
    assert back.extras["nested"] == {"a": [1, 2.5]}


def test_round_trip_without_labels_or_bn_statistics(tmp_path):
    obs = _share(LENET, knowledge=ServerKnowledge(labels=False, bn_statistics=False))
    obs.save(tmp_path / "o")
    back = Observation.load(tmp_path / "o")
    assert back.labels is None and back.bn_statistics is None
    assert back.update_kind == "gradient" and back.local_lr is None and back.local_steps == 1
    _assert_same_tensors(obs.update, back.update)
    assert back.buffers == {}


@pytest.mark.parametrize("form", ["stem", "safetensors", "json", "str"])
def test_load_accepts_either_file_or_stem(tmp_path, form):
    obs = _share(LENET)
    obs.save(tmp_path / "cap.safetensors")  # a suffix given to save is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cap.json", "cap.safetensors"]
    path = {"stem": tmp_path / "cap", "safetensors": tmp_path / "cap.safetensors",
            "json": tmp_path / "cap.json", "str": str(tmp_path / "cap.json")}[form]
    back = Observation.load(path)
    _assert_same_tensors(obs.update, back.update)


def test_save_creates_parent_folders(tmp_path):
    _share(LENET).save(tmp_path / "a" / "b" / "obs")
    assert (tmp_path / "a" / "b" / "obs.json").is_file()


# ------------------------------------------------------------------------------------- corrupted files
def test_truncated_tensor_file_is_refused_by_checksum(tmp_path):
    st, _ = _share(LENET).save(tmp_path / "obs")
    raw = st.read_bytes()
    st.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ObservationError, match="checksum"):
        Observation.load(tmp_path / "obs")


def test_modified_byte_is_refused(tmp_path):
    st, _ = _share(LENET).save(tmp_path / "obs")
    raw = bytearray(st.read_bytes())
    raw[-5] ^= 0x01  # inside the last tensor's data: still a parseable safetensors file
    st.write_bytes(bytes(raw))
    with pytest.raises(ObservationError, match="checksum"):
        Observation.load(tmp_path / "obs")


def test_json_checksum_covers_tensor_file_and_metadata(tmp_path):
    st, js = _share(LENET).save(tmp_path / "obs")
    meta = json.loads(js.read_text())
    body = {k: v for k, v in meta.items() if k != "integrity"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    h = hashlib.sha256(b"gradaudit-checked-pair/2\n")
    h.update(hashlib.sha256(st.read_bytes()).digest())
    h.update(canonical)
    assert meta["integrity"] == {"scheme": "sha256/tensors+metadata/v2", "sha256": h.hexdigest()}


@pytest.mark.parametrize("edit", [
    lambda m: m.update(batch_size=2), lambda m: m.update(labels_known=False), lambda m: m.update(defenses=["x"]),
    lambda m: m["model"].update(name="convnet"), lambda m: m["data"].update(mean=[0.4, 0.5, 0.5]),
    lambda m: m.update(extras={"note": 1}), lambda m: m.update(local_lr=0.5),
])
def test_any_edited_metadata_field_is_refused(tmp_path, edit):
    _share(LENET).save(tmp_path / "obs")
    edit_meta(tmp_path / "obs", edit, reseal=False)
    with pytest.raises(ObservationError, match="do not match their checksum"):
        Observation.load(tmp_path / "obs")


def test_reformatted_json_with_same_content_still_loads(tmp_path):
    _, js = _share(LENET).save(tmp_path / "obs")
    js.write_text(json.dumps(json.loads(js.read_text()), indent=7, sort_keys=True))  # same fields, other layout
    assert Observation.load(tmp_path / "obs").batch_size == 3


@pytest.mark.parametrize("tensor_checksum", [True, False])
def test_file_without_metadata_checksum_is_refused_unless_legacy_allowed(tmp_path, tensor_checksum):
    obs = _share(LENET)
    obs.save(tmp_path / "obs")
    make_legacy(tmp_path / "obs", tensor_checksum)
    with pytest.raises(ObservationError, match="no checksum over its metadata.*--allow-legacy"):
        Observation.load(tmp_path / "obs")
    back = Observation.load(tmp_path / "obs", allow_legacy=True)
    assert torch.equal(back.update["fc.weight"], obs.update["fc.weight"])
    assert back.legacy and "not verified" in back.legacy
    assert ("only its tensors" in back.legacy) == tensor_checksum


def test_legacy_tensor_checksum_is_still_checked(tmp_path):
    st, _ = _share(LENET).save(tmp_path / "obs")
    make_legacy(tmp_path / "obs")
    raw = bytearray(st.read_bytes())
    raw[-5] ^= 0x01
    st.write_bytes(bytes(raw))
    with pytest.raises(ObservationError, match="checksum"):
        Observation.load(tmp_path / "obs", allow_legacy=True)


def test_garbage_tensor_file_without_checksum_is_observation_error(tmp_path):
    st, js = _share(LENET).save(tmp_path / "obs")
    make_legacy(tmp_path / "obs", tensor_checksum=False)
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ObservationError, match="not a valid safetensors"):
        Observation.load(tmp_path / "obs", allow_legacy=True)


@pytest.mark.parametrize("missing", ["json", "safetensors"])
def test_missing_file_is_observation_error(tmp_path, missing):
    _share(LENET).save(tmp_path / "obs")
    (tmp_path / f"obs.{missing}").unlink()
    with pytest.raises(ObservationError, match=f"not found.*obs.{missing}"):
        Observation.load(tmp_path / "obs")


def test_invalid_or_foreign_json_is_observation_error(tmp_path):
    _, js = _share(LENET).save(tmp_path / "obs")
    js.write_text("{ truncated")
    with pytest.raises(ObservationError, match="not valid JSON"):
        Observation.load(tmp_path / "obs")
    js.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ObservationError, match="not a gradaudit observation"):
        Observation.load(tmp_path / "obs")


@pytest.mark.parametrize("field", ["batch_size", "data", "model"])
def test_json_missing_required_field_is_a_user_error(tmp_path, field):
    _share(LENET).save(tmp_path / "obs")
    edit_meta(tmp_path / "obs", lambda m: m.pop(field))
    with pytest.raises(ObservationError, match=field):
        Observation.load(tmp_path / "obs")


def test_json_batch_size_zero_is_refused_on_load(tmp_path):
    _share(LENET, b=2).save(tmp_path / "obs")
    edit_meta(tmp_path / "obs", lambda m: m.update(batch_size=0))
    with pytest.raises(ObservationError, match="batch_size must be >= 1"):
        Observation.load(tmp_path / "obs")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(batch_size="abc"), "'batch_size' must be int, got 'abc'"),
    (lambda m: m.update(batch_size=None), "'batch_size' must be int, got None"),
    (lambda m: m.update(batch_size=True), "'batch_size' must be int"),
    (lambda m: m.update(batch_size=1.5), "'batch_size' must be int"),
    (lambda m: m.update(local_steps="3"), "'local_steps' must be int"),
    (lambda m: m.update(local_lr="fast"), "'local_lr' must be int or float or null"),
    (lambda m: m.update(labels_known="yes"), "'labels_known' must be bool"),
    (lambda m: m.update(labels_known=False), "'labels_known' is false but the tensor file has labels"),
    (lambda m: m.update(bn_statistics_known=True, num_bn_layers=2), "lacks 'bn/0/mean'"),
    (lambda m: m.update(bn_statistics_known=True), "lacks BN statistics"),
    (lambda m: (m.update(bn_statistics_known=True), m.pop("num_bn_layers")), "lacks required field 'num_bn_layers'"),
    (lambda m: m.update(defenses="noise:0.1"), "'defenses' must be list"),
    (lambda m: m.update(defenses=[1, 2]), "defenses must be a list of strings"),
    (lambda m: m.update(extras=[1]), "'extras' must be dict"),
    (lambda m: m.update(data={"name": "x", "mean": "abc", "std": [1, 1, 1]}), "finite numbers"),
    (lambda m: m.update(data={"name": "x", "mean": [0, 0, 0], "std": [1, 0, 1]}), "'data.std' must be positive"),
    (lambda m: m.update(data=[1]), "'data' must be dict"),
    (lambda m: m.update(model={"name": "lenet"}), "model spec needs"),
    (lambda m: m["model"].update(input_shape=[3, 32]), "3 positive integers"),
    (lambda m: m["model"].update(kwargs=[1, 2]), "model spec needs"),
    (lambda m: m.update(update_kind="weights"), "update_kind must be"),
])
def test_malformed_metadata_is_one_observation_error(tmp_path, edit, message):
    _share(LENET).save(tmp_path / "obs")
    edit_meta(tmp_path / "obs", edit)
    with pytest.raises(ObservationError) as info:
        Observation.load(tmp_path / "obs")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_labels_out_of_range_or_float_are_refused():
    obs = _share(LENET)
    with pytest.raises(ObservationError, match="labels must lie in"):
        Observation(**{**_init_args(obs), "labels": torch.tensor([1, 2, 10])})
    with pytest.raises(ObservationError, match="labels must be integers"):
        Observation(**{**_init_args(obs), "labels": torch.tensor([1.0, 2.0, 3.0])})


def _init_args(obs):
    return {k: getattr(obs, k) for k in ("model", "parameters", "update", "batch_size", "data", "buffers",
                                         "update_kind", "local_steps", "local_lr", "labels", "bn_statistics",
                                         "defenses", "extras")}


def test_no_pickle_is_used(tmp_path, monkeypatch, full_obs):
    st, js = full_obs.save(tmp_path / "obs")
    # the tensor file is plain safetensors, readable by safetensors' own loader
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(st))
    assert torch.equal(tensors["update/fc.weight"], full_obs.update["fc.weight"])
    assert torch.equal(tensors["labels"], full_obs.labels)
    with safe_open(str(st), framework="pt") as f:
        assert set(f.keys()) == set(tensors)
    header_len = int.from_bytes(st.read_bytes()[:8], "little")
    assert json.loads(st.read_bytes()[8:8 + header_len])  # the header is JSON
    # the metadata is plain JSON (no pickle protocol bytes)
    meta = json.loads(js.read_text())
    assert meta["format"] == "gradaudit-observation" and meta["version"] == 1
    assert not js.read_bytes().startswith(b"\x80")

    # and loading never calls pickle or torch.load
    def boom(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    monkeypatch.setattr(torch, "load", boom)
    back = Observation.load(st)
    assert torch.equal(back.update["fc.weight"], full_obs.update["fc.weight"])


# ---------------------------------------------------------------------------------- construction checks
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["update", "parameters", "buffers"])
def test_non_finite_tensors_refused_at_construction(bad, where):
    obs = _share(CONVNET)
    d = {k: v.clone() for k, v in getattr(obs, where).items()}
    key = "fc.weight" if where != "buffers" else "features.1.running_var"
    d[key][0, ...] = bad
    kw = dict(_fields(obs), parameters=obs.parameters, update=obs.update, buffers=obs.buffers)
    kw[where] = d
    with pytest.raises(ObservationError, match=f"'{key}' contains NaN or inf"):
        Observation(**kw)


def _kwargs(obs: Observation, **changes) -> dict:
    kw = dict(_fields(obs), parameters=obs.parameters, update=obs.update, buffers=obs.buffers, labels=obs.labels)
    kw.update(changes)
    return kw


def test_update_missing_key_refused():
    obs = _share(LENET)
    update = {k: v for k, v in obs.update.items() if k != "body.2.bias"}
    with pytest.raises(ObservationError, match="'body.2.bias'"):
        Observation(**_kwargs(obs, update=update))


def test_update_extra_key_refused():
    obs = _share(LENET)
    update = dict(obs.update, **{"head.weight": torch.zeros(2)})
    with pytest.raises(ObservationError, match="'head.weight'.*not a model parameter"):
        Observation(**_kwargs(obs, update=update))


def test_update_wrong_shape_names_tensor_and_both_shapes():
    obs = _share(LENET)
    update = dict(obs.update)
    update["fc.weight"] = torch.zeros(10, 7)
    with pytest.raises(ObservationError) as info:
        Observation(**_kwargs(obs, update=update))
    msg = str(info.value)
    assert "'fc.weight'" in msg
    assert "(10, 7)" in msg and str(tuple(obs.parameters["fc.weight"].shape)) in msg


@pytest.mark.parametrize("changes, pattern", [
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(update_kind="delta"), "update_kind"),
    (dict(update_kind="local_update", local_lr=None), "local_lr"),
    (dict(labels=torch.tensor([1, 2])), "2 labels given for batch_size 3"),
    (dict(data=DataSpec("g", (0.5,), (0.2,))), "one entry per input channel"),
])
def test_bad_metadata_refused(changes, pattern):
    obs = _share(LENET, b=3)
    with pytest.raises(ObservationError, match=pattern):
        Observation(**_kwargs(obs, **changes))


# ----------------------------------------------------------------------------------------- check_model
def test_check_model_accepts_the_right_architecture():
    obs = _share(CONVNET)
    obs.check_model(build_model(CONVNET))


def test_check_model_width_mismatch_names_tensor_and_both_shapes():
    obs = _share(LENET)
    with pytest.raises(ObservationError) as info:
        obs.check_model(build_model(ModelSpec("lenet", 10, SHAPE, {"width": 8})))
    msg = str(info.value)
    assert "'body.0.weight'" in msg
    assert "(12, 3, 5, 5)" in msg and "(8, 3, 5, 5)" in msg


def test_check_model_class_count_mismatch_names_classifier():
    obs = _share(LENET)
    with pytest.raises(ObservationError) as info:
        obs.check_model(build_model(ModelSpec("lenet", 100, SHAPE)))
    msg = str(info.value)
    assert "'fc.weight'" in msg and "(10, 192)" in msg and "(100, 192)" in msg


def test_check_model_other_architecture_names_first_tensor():
    obs = _share(LENET)
    with pytest.raises(ObservationError) as info:
        obs.check_model(build_model(CONVNET))
    msg = str(info.value)
    assert "'features.0.weight'" in msg and "(4, 3, 3, 3)" in msg


def test_check_model_other_architecture_names_both_shapes():
    obs = _share(LENET)
    with pytest.raises(ObservationError) as info:
        obs.check_model(build_model(CONVNET))
    msg = str(info.value)
    assert "(4, 3, 3, 3)" in msg and "(12, 3, 5, 5)" in msg


def test_check_model_extra_observation_tensor_refused():
    obs = _share(LENET)
    params = dict(obs.parameters, **{"extra.weight": torch.zeros(3)})
    update = dict(obs.update, **{"extra.weight": torch.zeros(3)})
    obs2 = Observation(**_kwargs(obs, parameters=params, update=update))
    with pytest.raises(ObservationError, match="'extra.weight' is not a parameter of model 'lenet'"):
        obs2.check_model(build_model(LENET))


def test_check_model_buffer_shape_mismatch():
    obs = _share(CONVNET)
    buffers = dict(obs.buffers)
    buffers["features.1.running_mean"] = torch.zeros(7)
    obs2 = Observation(**_kwargs(obs, buffers=buffers))
    with pytest.raises(ObservationError, match=r"features.1.running_mean.*\(7,\).*\(4,\)"):
        obs2.check_model(build_model(CONVNET))


# ---------------------------------------------------------------------------------- gradient estimate
def test_gradient_estimate_of_gradient_is_the_update_itself():
    obs = _share(LENET)
    assert obs.gradient_estimate is obs.update


def test_gradient_estimate_of_local_update_divides_by_k_lr():
    obs = _share(LENET, protocol="fedavg")
    assert obs.local_steps == 2 and obs.local_lr == 0.05
    est = obs.gradient_estimate
    for k, v in obs.update.items():
        torch.testing.assert_close(est[k], v / (2 * 0.05), rtol=1e-6, atol=0)
    # a known update: 0.3 / (2 * 0.05) = 3
    obs2 = Observation(**_kwargs(obs, update={k: torch.full_like(v, 0.3) for k, v in obs.update.items()}))
    assert torch.allclose(obs2.gradient_estimate["fc.bias"], torch.full((10,), 3.0))


def test_to_device_copies_everything():
    from gradaudit.defenses import GaussianNoise

    obs = _share(CONVNET, knowledge=ServerKnowledge(True, True), transforms=[GaussianNoise(0.0)])
    moved = obs.to("cpu")
    assert moved is not obs
    _assert_same_tensors(obs.update, moved.update)
    assert torch.equal(moved.labels, obs.labels)
    assert len(moved.bn_statistics) == len(obs.bn_statistics) == 4
    assert moved.defenses == ["noise:0"]

"""Model registry and built-in models: shapes, parameter counts, errors, rebuild from metadata."""

from __future__ import annotations

import json
import socket
import textwrap
import urllib.error

import pytest
import torch
from torch import nn

from kdeploy.errors import UserError
from kdeploy.models import (
    build_model,
    count_params,
    create_model,
    list_models,
    model_meta,
    module_paths,
    register_model,
)
from kdeploy.models.registry import MODELS

SHAPES = [(1, 28, 28), (3, 32, 32)]
CIFAR_RESNETS = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


def logits(model: nn.Module, in_shape: tuple[int, int, int], batch: int = 2) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(batch, *in_shape))


def test_builtin_models_are_registered() -> None:
    names = list_models()
    assert {"mlp", "cnn", "torchvision", "resnet8x4", "resnet32x4", *CIFAR_RESNETS} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("in_shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_model_gives_logits(name: str, in_shape: tuple[int, int, int]) -> None:
    if name == "timm":
        pytest.importorskip("timm")
    kwargs = {"model": "mlp"} if name == "ensemble" else {}
    model = create_model(name, num_classes=7, in_shape=in_shape, **kwargs)
    assert logits(model, in_shape).shape == (2, 7)


def test_an_ensemble_returns_its_members_mean_logits() -> None:
    """The geometric mean of the members' distributions at any temperature: softmax of the mean logits."""
    model = create_model("ensemble", num_classes=10, in_shape=(1, 28, 28), model="cnn", members=3,
                         member_kwargs={"width": 4})  # fmt: skip
    x = torch.randn(5, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        outs = [member(x) for member in model.members]
        torch.testing.assert_close(model(x), (outs[0] + outs[1] + outs[2]) / 3)
        for t in (1.0, 20.0):  # the normalised geometric mean of the members' tempered distributions
            geometric = torch.stack([torch.log_softmax(o / t, 1) for o in outs]).mean(0).softmax(1)
            torch.testing.assert_close(torch.softmax(model(x) / t, 1), geometric)
    assert module_paths(model)[:2] == ["members", "members.0"], "members are hooked by path: members.0.<layer>"
    with pytest.raises(UserError, match="members must be a positive integer"):
        create_model("ensemble", num_classes=10, in_shape=(1, 28, 28), model="mlp", members=0)
    with pytest.raises(UserError, match="cannot themselves be ensembles"):
        create_model("ensemble", num_classes=10, in_shape=(1, 28, 28), model="ensemble")


@pytest.mark.parametrize(("hidden", "expected"), [([1200, 1200], 2_395_210), ([800], 636_010), ([], 7_850)])
def test_mlp_param_counts(hidden: list[int], expected: int) -> None:
    model = create_model("mlp", num_classes=10, in_shape=(1, 28, 28), hidden=hidden)
    assert count_params(model) == expected


def test_mlp_layers_have_stable_names() -> None:
    model = create_model("mlp", num_classes=10, in_shape=(1, 28, 28), dropout=0.2)
    paths = module_paths(model)
    assert paths == ["flatten", "drop_in", "fc1", "act1", "drop1", "fc2", "act2", "drop2", "head"]
    assert model.get_submodule("fc2").out_features == 1200


@pytest.mark.parametrize(("width", "expected"), [(32, 4_435_594), (16, 1_111_882), (8, 279_466)])
def test_cnn_param_counts(width: int, expected: int) -> None:
    model = create_model("cnn", num_classes=10, in_shape=(3, 32, 32), width=width)
    assert count_params(model) == expected


def test_cnn_named_stages_and_small_width() -> None:
    model = create_model("cnn", num_classes=10, in_shape=(1, 28, 28), width=8)
    paths = module_paths(model)
    for stage in ("stage1", "stage2", "stage3", "pool", "head"):
        assert stage in paths
    seen: dict[str, tuple[int, ...]] = {}
    for stage in ("stage1", "stage2", "stage3"):
        model.get_submodule(stage).register_forward_hook(
            lambda _m, _i, out, stage=stage: seen.__setitem__(stage, tuple(out.shape))
        )
    logits(model, (1, 28, 28))
    assert seen == {"stage1": (2, 32, 14, 14), "stage2": (2, 64, 7, 7), "stage3": (2, 128, 7, 7)}


@pytest.mark.parametrize(
    ("name", "expected"),
    [("resnet8x4", 1_233_540), ("resnet32x4", 7_433_860), ("resnet56", 861_620), ("resnet20", 278_324)],
)
def test_cifar_resnet_param_counts_match_crd(name: str, expected: int) -> None:
    assert count_params(create_model(name, num_classes=100, in_shape=(3, 32, 32))) == expected


def test_cifar_resnet_layer_names() -> None:
    paths = module_paths(create_model("resnet8x4", num_classes=100, in_shape=(3, 32, 32)))
    for path in ("conv1", "bn1", "layer1", "layer2", "layer3", "avgpool", "fc", "layer3.0.downsample"):
        assert path in paths


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(UserError, match=r"unknown model 'resnet8x5' \(did you mean 'resnet8x4'\?\); valid: .*mlp"):
        create_model("resnet8x5", num_classes=10, in_shape=(3, 32, 32))


def test_bad_kwargs_are_user_errors() -> None:
    with pytest.raises(UserError) as info:
        create_model("mlp", num_classes=10, in_shape=(1, 28, 28), hiden=[10])
    message = str(info.value)
    assert message.startswith("model 'mlp': unexpected argument 'hiden' (did you mean 'hidden'?)")
    assert message.endswith("accepted: hidden, dropout, input_dropout")
    with pytest.raises(UserError, match="model 'resnet20': unexpected argument 'width'; accepted: none"):
        create_model("resnet20", num_classes=10, in_shape=(3, 32, 32), width=2)
    with pytest.raises(UserError, match="model 'cnn': width must be a positive integer"):
        create_model("cnn", num_classes=10, in_shape=(3, 32, 32), width=0)
    with pytest.raises(UserError, match="num_classes comes from the data settings"):
        build_model(model_meta("mlp", None, {"num_classes": 3}, 10, [1, 4, 4]))
    with pytest.raises(UserError, match="in_shape must be"):
        create_model("mlp", num_classes=10, in_shape=(28, 28))


def test_register_model_forms_and_missing_argument() -> None:
    @register_model("_test_needs_arg")
    def needs_arg(*, num_classes: int, in_shape: tuple[int, int, int], size: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes))

    @register_model
    def _test_bare(*, num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    try:
        assert "_test_bare" in list_models()
        with pytest.raises(UserError, match="model '_test_needs_arg': missing argument 'size'; accepted: size"):
            create_model("_test_needs_arg", num_classes=2, in_shape=(1, 2, 2))
        assert isinstance(create_model("_test_needs_arg", num_classes=2, in_shape=(1, 2, 2), size=1), nn.Module)
    finally:
        MODELS._items.pop("_test_needs_arg", None)
        MODELS._items.pop("_test_bare", None)


def test_build_model_round_trip_by_name() -> None:
    meta = model_meta("mlp", None, {"hidden": [32], "dropout": 0.1}, 10, (1, 28, 28))
    assert json.loads(json.dumps(meta)) == meta
    assert meta == {
        "name": "mlp",
        "target": None,
        "kwargs": {"hidden": [32], "dropout": 0.1},
        "num_classes": 10,
        "in_shape": [1, 28, 28],
    }
    original = create_model("mlp", num_classes=10, in_shape=(1, 28, 28), hidden=[32], dropout=0.1)
    rebuilt = build_model(meta)
    rebuilt.load_state_dict(original.state_dict())  # same architecture, same keys
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(original.eval()(x), rebuilt.eval()(x))


def test_model_meta_needs_exactly_one_source() -> None:
    with pytest.raises(UserError, match="exactly one of 'name'"):
        model_meta("mlp", "a.b:C", {}, 10, (1, 28, 28))
    with pytest.raises(UserError, match="exactly one of 'name'"):
        model_meta(None, None, {}, 10, (1, 28, 28))


USER_MODULE = """
from torch import nn

class TinyNet(nn.Module):
    def __init__(self, num_classes, hidden=4):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.body(x))

class Linear3(nn.Sequential):
    def __init__(self, in_shape, scale=1):
        c, h, w = in_shape
        super().__init__(nn.Flatten(), nn.Linear(c * h * w, 3 * scale))

def make_linear(in_shape):
    return Linear3(in_shape)

NOT_A_MODEL = 42
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "kd_user_models.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "kd_user_models"


def test_build_model_from_target(user_module: str) -> None:
    meta = model_meta(None, f"{user_module}:TinyNet", {"hidden": 8}, 5, [3, 32, 32])
    model = build_model(meta)
    assert logits(model, (3, 32, 32)).shape == (2, 5)
    assert "body.1" in module_paths(model)
    # in_shape only when the signature names it; num_classes is not accepted here
    linear = build_model(model_meta(None, f"{user_module}:Linear3", {"scale": 2}, 5, [1, 4, 4]))
    assert logits(linear, (1, 4, 4)).shape == (2, 6)


def test_target_errors(user_module: str) -> None:
    with pytest.raises(
        UserError, match=r"cannot import module 'no_such_pkg\.mod' \(.*\); check the path and PYTHONPATH"
    ):
        build_model(model_meta(None, "no_such_pkg.mod:Net", {}, 10, [1, 28, 28]))
    with pytest.raises(UserError, match="has no attribute 'Missing'; check the path and PYTHONPATH"):
        build_model(model_meta(None, f"{user_module}:Missing", {}, 10, [1, 28, 28]))
    with pytest.raises(UserError, match=r"expected 'package\.module:Class'"):
        build_model(model_meta(None, f"{user_module}.TinyNet", {}, 10, [1, 28, 28]))
    for not_a_class in ("NOT_A_MODEL", "make_linear"):
        with pytest.raises(UserError, match="is not a torch.nn.Module class"):
            build_model(model_meta(None, f"{user_module}:{not_a_class}", {}, 10, [1, 28, 28]))
    with pytest.raises(UserError, match="is not a torch.nn.Module class"):
        build_model(model_meta(None, "subprocess:getoutput", {"cmd": "touch /tmp/x"}, 10, [1, 28, 28]))
    with pytest.raises(UserError, match=r"unexpected argument 'hiden' \(did you mean 'hidden'\?\)"):
        build_model(model_meta(None, f"{user_module}:TinyNet", {"hiden": 3}, 10, [1, 28, 28]))


def test_torchvision_small_input_resnet18() -> None:
    model = create_model("torchvision", num_classes=10, in_shape=(3, 32, 32), arch="resnet18", small_input=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    seen = {}
    model.layer4.register_forward_hook(lambda _m, _i, out: seen.update(layer4=tuple(out.shape)))
    assert logits(model, (3, 32, 32)).shape == (2, 10)
    assert seen["layer4"] == (2, 512, 4, 4)
    assert model.fc.out_features == 10


def test_torchvision_one_channel_and_errors() -> None:
    model = create_model("torchvision", num_classes=4, in_shape=(1, 28, 28), arch="mobilenet_v3_small")
    assert logits(model, (1, 28, 28)).shape == (2, 4)
    gray = create_model("torchvision", num_classes=4, in_shape=(1, 32, 32), small_input=True)
    assert gray.conv1.in_channels == 1
    with pytest.raises(UserError, match=r"unknown torchvision arch 'resnet19' \(did you mean 'resnet18'\?\); e\.g\."):
        create_model("torchvision", num_classes=10, in_shape=(3, 32, 32), arch="resnet19")
    with pytest.raises(UserError, match="small_input is supported for resnet archs only"):
        create_model("torchvision", num_classes=10, in_shape=(3, 32, 32), arch="mobilenet_v3_small", small_input=True)
    with pytest.raises(UserError, match="unknown weights 'IMAGENET9'; valid: DEFAULT, IMAGENET1K_V1"):
        create_model("torchvision", num_classes=10, in_shape=(3, 32, 32), weights="IMAGENET9")


def test_torchvision_weights_without_network(tmp_path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: a download would be needed
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match=r"cannot download torchvision weights 'DEFAULT' .*set weights: null"):
        create_model("torchvision", num_classes=10, in_shape=(3, 32, 32), weights="DEFAULT")
    assert socket.getdefaulttimeout() is None


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "squeezenet1_1"])
def test_torchvision_weights_replace_classifier_and_stem(arch: str, tmp_path, monkeypatch) -> None:
    import torchvision

    def fake_download(url, dst, *args, **kwargs):  # "pretrained" = a fresh 1000-class model
        torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), dst)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    model = create_model("torchvision", num_classes=6, in_shape=(1, 32, 32), arch=arch, weights="DEFAULT")
    assert logits(model, (1, 32, 32)).shape == (2, 6)


def _user_model_folder(folder, name: str):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    return folder


def test_user_model_in_the_current_folder_needs_no_pythonpath(tmp_path, monkeypatch) -> None:
    import sys

    name = f"kd_cwd_models_{tmp_path.name.replace('-', '_')}"
    monkeypatch.chdir(_user_model_folder(tmp_path / "project", name))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path / "project"))])
    model = build_model(model_meta(None, f"{name}:TinyNet", {"hidden": 8}, 5, [3, 32, 32]))
    assert logits(model, (3, 32, 32)).shape == (2, 5)


def test_user_model_next_to_the_recipe_needs_no_pythonpath(tmp_path, monkeypatch) -> None:
    import sys

    from kdeploy.recipe import load_recipe

    from .conftest import tiny_recipe, write_recipe

    name = f"kd_nextto_models_{tmp_path.name.replace('-', '_')}"
    folder = _user_model_folder(tmp_path / "project", name)
    raw = tiny_recipe(tmp_path)
    raw["student"] = {"target": f"{name}:TinyNet", "kwargs": {"hidden": 8}}
    recipe_path = write_recipe(folder / "recipe.yaml", raw)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the folder load_recipe adds is undone after the test
    with pytest.raises(UserError, match=rf"cannot import module '{name}'.*check the path and PYTHONPATH"):
        build_model(model_meta(None, f"{name}:TinyNet", {"hidden": 8}, 5, [3, 32, 32]))
    recipe = load_recipe(recipe_path)
    model = build_model(model_meta(None, recipe.student.target, recipe.student.kwargs, 5, [3, 32, 32]))
    assert logits(model, (3, 32, 32)).shape == (2, 5)


def test_dwcnn_is_depthwise_separable_with_named_blocks() -> None:
    model = create_model("dwcnn", num_classes=10, in_shape=(1, 28, 28), width=4)
    assert count_params(model) == 10_474
    paths = module_paths(model)
    for name in ("stem", "block1", "block2", "block3", "block4", "pool", "head"):
        assert name in paths
    dw = model.get_submodule("block3.dw")
    assert dw.groups == dw.in_channels == dw.out_channels == 32 and dw.stride == (2, 2)
    assert model.get_submodule("block3.pw").kernel_size == (1, 1)
    seen: dict[str, tuple[int, ...]] = {}
    for name in ("block1", "block4"):
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: seen.__setitem__(name, tuple(out.shape))
        )
    logits(model, (1, 28, 28))
    assert seen == {"block1": (2, 32, 14, 14), "block4": (2, 64, 7, 7)}
    with pytest.raises(UserError, match="width"):
        create_model("dwcnn", num_classes=10, in_shape=(1, 28, 28), width=0)


def test_fast_cnn_flip_translate_tta_averages_six_views_and_exports(tmp_path) -> None:
    import onnxruntime as ort

    from kdeploy.export.onnx import export_graph

    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "in_shape": (3, 16, 16), "widths": [4, 8, 8]}
    model = create_model("fast_cnn", **kwargs, tta="flip_translate").eval()
    x = torch.randn(3, 3, 16, 16)
    down_right = [*range(1, 16), 14]  # pixel i of the down-right shift is pixel i + 1, reflected at the edge
    up_left = [1, *range(15)]

    def mirrored(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model.features(v) + model.features(v.flip(-1)))

    def shift(v: torch.Tensor, idx: list[int]) -> torch.Tensor:
        return v[:, :, idx][:, :, :, idx]

    with torch.no_grad():
        want = 0.5 * mirrored(x) + 0.25 * (mirrored(shift(x, up_left)) + mirrored(shift(x, down_right)))
        torch.testing.assert_close(model(x), want)
        model.tta = "flip"
        torch.testing.assert_close(model(x), mirrored(x))
        model.tta = "flip_translate"
    path = tmp_path / "m.onnx"
    export_graph(model, [3, 16, 16], path, 18)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=1e-4)
    with pytest.raises(UserError, match="tta must be one of none, flip, flip_translate"):
        create_model("fast_cnn", **kwargs, tta="translate")

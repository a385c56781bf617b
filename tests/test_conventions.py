"""tonylins, shicai and neuleaf exactly: counts against their own layer lists, fvcore, and tonylins' weights."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mbv2_search.arch import build_spec
from mbv2_search.cost import costs, fvcore_count
from mbv2_search.knobs import Knobs
from mbv2_search.model import build_model
from mbv2_search.weights import from_tonylins
from tests import reference_implementations as ref

CASES = [
    *[("tonylins", width, ref.tonylins_new(width)) for width in (0.35, 0.5, 0.75, 1.0, 1.4)],
    ("shicai", 1.0, ref.shicai()),
    ("neuleaf", 1.0, ref.neuleaf()),
]


@pytest.mark.parametrize(("convention", "width", "theirs"), CASES, ids=[f"{c}-{w}" for c, w, _ in CASES])
def test_costs_equal_the_implementations_own_layer_lists(convention, width, theirs):
    spec = build_spec(Knobs(width=width, convention=convention))
    ours = costs(spec)
    assert (ours.madds, ours.params) == (theirs.macs, theirs.params)


@pytest.mark.parametrize("convention", ["tonylins", "shicai", "neuleaf"])
def test_fvcore_counts_the_built_module_as_we_do(convention):
    spec = build_spec(Knobs(convention=convention, resolution=96))
    counted = fvcore_count(spec)
    assert counted.madds == costs(spec).madds and counted.module_params == costs(spec).params


def test_neuleaf_pads_as_tensorflow_same():
    """Stride-2 convs on even inputs pad only after (TF 'SAME'), so the output is ceil(in / 2)."""
    model = build_model(build_spec(Knobs(convention="neuleaf", resolution=96))).eval()
    stem = model.features[0][0]
    assert stem.pads == (0, 1, 0, 1) and model(torch.zeros(1, 3, 96, 96)).shape == (1, 1000)
    image = torch.zeros(1, 3, 6, 6)
    image[..., 2, 2] = 1.0  # SAME's first 3x3 window covers rows 0-2 (padding after); a symmetric one rows -1-1
    ones = torch.ones(1, 3, 3, 3)
    same = nn.functional.conv2d(nn.functional.pad(image, stem.pads), ones, stride=2)
    symmetric = nn.functional.conv2d(image, ones, stride=2, padding=1)
    assert same.shape == symmetric.shape == (1, 1, 3, 3)
    assert same[0, 0, 0, 0] == 3.0 and symmetric[0, 0, 0, 0] == 0.0


def test_shicai_is_the_v1_table_with_relu_and_a_conv_classifier():
    model = build_model(build_spec(Knobs(convention="shicai")))
    assert [b.stride for b in model.spec.blocks][6:11] == [1, 1, 1, 1, 2]  # 64-row at stride 1, 96-row at 2
    assert isinstance(model.features[0][2], nn.ReLU) and isinstance(model.classifier[1], nn.Conv2d)
    assert model.spec.blocks[0].expand and model.spec.blocks[0].hidden_channels == 32


class _TonylinsBlock(nn.Module):
    """Their InvertedResidual, re-typed from MobileNetV2.py @99f2136 (independent of our builder)."""

    def __init__(self, inp: int, oup: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = int(inp * t)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if t != 1:
            layers += [nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden)]
        layers += [nn.ReLU6(True), nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class _Tonylins(nn.Module):
    def __init__(self, width: float, classes: int = 1000) -> None:
        super().__init__()
        last = ref.make_divisible(1280 * width) if width > 1.0 else 1280
        features, cin = [nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(True))], 32
        for t, c, n, s in ref.SETTING:
            cout = ref.make_divisible(c * width) if t > 1 else c
            for i in range(n):
                features.append(_TonylinsBlock(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(nn.Sequential(nn.Conv2d(cin, last, 1, 1, 0, bias=False), nn.BatchNorm2d(last), nn.ReLU6(True)))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Linear(last, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(3).mean(2))


@pytest.mark.parametrize("width", [0.5, 1.0, 1.4])
def test_a_tonylins_state_dict_loads_and_gives_their_outputs(width):
    torch.manual_seed(0)
    theirs = _Tonylins(width).eval()
    for module in theirs.modules():  # statistics that are not the identity, so a wrong key would show
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    state = {k: v for k, v in theirs.state_dict().items() if not k.endswith("num_batches_tracked")}  # pre-0.4.1
    ours = build_model(build_spec(Knobs(width=width, resolution=64, convention="tonylins"))).eval()
    ours.load_state_dict(from_tonylins(state), strict=True)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(image), theirs(image), atol=1e-5)


def test_train_init_takes_tonylins_and_torchvision_weights_and_refuses_others(tmp_path, capsys):
    import torchvision

    from mbv2_search.cli import main

    torch.save({k: v for k, v in _Tonylins(1.0).state_dict().items()}, tmp_path / "tony.pth")
    torch.save(torchvision.models.mobilenet_v2(width_mult=0.5).state_dict(), tmp_path / "tv.pth")
    common = ["train", "--resolution", "17", "--epochs", "1", "--json"]
    main([*common, "--convention", "tonylins", "--init", str(tmp_path / "tony.pth"), "--run-dir", str(tmp_path / "a")])
    payload = json.loads(capsys.readouterr().out)
    assert payload["init_layout"] == "tonylins' layout" and "1000 classes, the model 10" in payload["init"]
    main([*common, "--width", "0.5", "--init", str(tmp_path / "tv.pth"), "--run-dir", str(tmp_path / "b")])
    assert json.loads(capsys.readouterr().out)["init_layout"] == "torchvision's layout"
    with pytest.raises(SystemExit) as exit_:
        main([*common, "--width", "0.75", "--init", str(tmp_path / "tv.pth"), "--run-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "features.0.0.weight: (16, 3, 3, 3) in the file, (24, 3, 3, 3)" in err
    assert not (tmp_path / "c").exists()


def test_eval_of_tonylins_weights_counts_what_their_model_predicts(tmp_path, capsys):
    from mbv2_search.cli import main
    from mbv2_search.data import load_digits

    torch.manual_seed(1)
    theirs = _Tonylins(0.5, classes=10).eval()
    torch.save(theirs.state_dict(), tmp_path / "tony10.pth")
    main(["eval", "--convention", "tonylins", "--width", "0.5", "--resolution", "17"] + ["--device", "cpu"]
         + ["--weights", str(tmp_path / "tony10.pth"), "--split", "test", "--json"])  # fmt: skip
    payload = json.loads(capsys.readouterr().out)
    data = load_digits(17, torch.device("cpu"))
    with torch.no_grad():
        correct = sum(int((theirs(x).argmax(1) == y).sum()) for x, y in data.loader("test", 256))
    assert payload["weights_layout"] == "tonylins' layout" and payload["correct"] == correct
    assert payload["images"] == len(data.test) and payload["split"] == "test"

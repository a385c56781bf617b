"""The supernet: every member of a space is a slice of it, and both ways of running a member agree."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from mbv2_search.arch import build_spec
from mbv2_search.config import ArchFile, Range
from mbv2_search.elastic import NotElastic, check_elastic, corner_knobs, random_params
from mbv2_search.space import knobs_from_params
from mbv2_search.supernet import DoesNotFit, SuperNet, extract, recalibrate, zero_residual_branches
from mbv2_search.supernet_train import Sandwich, SandwichModule

# every elastic knob at once, per-row kernels and widths included
SPACE = {
    "width": {"choices": [0.25, 0.5, 0.75]},
    "resolution": {"choices": [20, 24]},
    "expansion": {"choices": [2, 6]},
    "depth": {"low": 0.5, "high": 1.0, "step": 0.25},
    "kernels": {"choices": [3, 5, 7], "per_row": True},
    "row_widths": {"choices": [0.5, 1.0], "per_row": True},
    "se_ratio": {"choices": [0.0, 0.25]},
}


def arch_file(vary: dict | None = None, **knobs: object) -> ArchFile:
    return ArchFile.model_validate({"knobs": {"num_classes": 10, **knobs}, "vary": vary or SPACE})


def member(space: ArchFile, params: dict) -> object:
    return build_spec(knobs_from_params(params, space), space.to_table())


def supernet_with_random_statistics(space: ArchFile) -> SuperNet:
    torch.manual_seed(0)
    supernet = SuperNet(build_spec(corner_knobs(space, largest=True), space.to_table()))
    for module in supernet.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # not the identity a fresh BatchNorm is
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_()
            module.bias.data.normal_()
    return supernet.eval()


@pytest.mark.parametrize("convention", ["torchvision", "tf-slim", "tonylins"])
def test_a_member_run_through_the_supernet_equals_its_extracted_model(convention):
    space = arch_file(convention=convention)
    supernet, rng = supernet_with_random_statistics(space), random.Random(0)
    for _ in range(4):
        spec = member(space, random_params(space, rng))
        images = torch.randn(3, 3, spec.resolution, spec.resolution)
        with torch.no_grad():
            shared, standalone = supernet(images, spec), extract(supernet, spec).eval()(images)
        assert shared.shape == (3, 10)
        assert torch.equal(shared, standalone)


def test_the_largest_member_is_the_supernet_itself():
    space = arch_file()
    supernet = supernet_with_random_statistics(space)
    images = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(supernet(images, supernet.spec), supernet.net(images))
    extracted = extract(supernet, supernet.spec).state_dict()
    assert all(torch.equal(value, supernet.net.state_dict()[key]) for key, value in extracted.items())


def test_a_member_takes_first_channels_and_kernel_centres():
    space = arch_file()
    supernet = supernet_with_random_statistics(space)
    params = {**random_params(space, random.Random(3)), "kernels_1": 3, "width": 0.25}
    spec = member(space, params)
    ours = extract(supernet, spec).state_dict()
    block = next(i for i, b in enumerate(spec.blocks, start=1) if b.row == 1)
    key = f"features.{block}.conv.1.0.weight"  # row 1's depthwise conv
    theirs = supernet.net.state_dict()[key]
    assert theirs.shape[-1] == 7 and ours[key].shape[-1] == 3
    assert torch.equal(ours[key], theirs[: ours[key].shape[0], :, 2:5, 2:5])


def test_training_a_member_moves_only_its_slices():
    space = arch_file()
    supernet = supernet_with_random_statistics(space).train()
    smallest = build_spec(corner_knobs(space, largest=False), space.to_table())
    loss = supernet(torch.randn(4, 3, 20, 20), smallest).logsumexp(1).mean()
    loss.backward()
    stem = supernet.net.features[0][0].weight
    used = smallest.stem_channels
    assert stem.grad[:used].abs().sum() > 0 and stem.grad[used:].abs().sum() == 0
    rows = [b.row for b in supernet.spec.blocks]
    fourth = rows.index(3) + 3 + 1  # row 3's fourth block (features.0 is the stem): depth 0.5 keeps two
    assert rows.count(3) == 4 and all(p.grad is None for p in supernet.net.features[fourth].parameters())


def test_zeroed_residual_branches_make_a_shallower_member_compute_what_the_largest_does():
    space = arch_file({"depth": {"choices": [0.5, 1.0]}})
    torch.manual_seed(0)
    largest = build_spec(corner_knobs(space, largest=True), space.to_table())
    supernet = SuperNet(largest).eval()
    shallow = build_spec(corner_knobs(space, largest=False), space.to_table())
    assert len(shallow.blocks) < len(largest.blocks)
    images = torch.randn(2, 3, largest.resolution, largest.resolution)
    with torch.no_grad():  # the blocks depth drops are residual ones: zeroed, each is the identity
        assert not torch.equal(supernet(images), supernet(images, shallow))
        assert zero_residual_branches(supernet.net) > 0
        assert torch.equal(supernet(images), supernet(images, shallow))


def test_recalibration_gives_the_plain_mean_over_batches():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1, bias=False), torch.nn.BatchNorm2d(2))
    model[1].running_mean.fill_(100.0)
    batches = [(torch.randn(8, 1, 4, 4) + shift, None) for shift in (0.0, 3.0)]
    seen = recalibrate(model, batches)
    with torch.no_grad():
        means = [model[0](images).mean(dim=(0, 2, 3)) for images, _ in batches]
    assert seen == 16 and not model.training
    assert torch.allclose(model[1].running_mean, (means[0] + means[1]) / 2, atol=1e-6)


def test_a_member_larger_than_the_supernet_is_refused():
    small = arch_file({"width": {"choices": [0.25, 0.5]}})
    supernet = SuperNet(build_spec(corner_knobs(small, largest=True), small.to_table()))
    wider = build_spec(replace(corner_knobs(small, largest=True), width=1.0), small.to_table())
    with pytest.raises(DoesNotFit, match="channels; the supernet's layer has"):
        extract(supernet, wider)


@pytest.mark.parametrize(
    ("vary", "knobs", "key"),
    [
        ({"stem_stride": {"choices": [1, 2]}}, {}, "vary.stem_stride"),
        ({"strides": {"choices": [1, 2], "per_row": True}}, {}, "vary.strides"),
        ({"shortcut": {"choices": ["bottleneck", "none"]}}, {}, "vary.shortcut"),
        ({"width": {"choices": [0.5, 1.0]}}, {"shortcut": "expansion"}, "knobs.shortcut"),
        ({"width": {"choices": [0.5, 1.0]}}, {"convention": "neuleaf"}, "knobs.convention"),
    ],
)
def test_knobs_no_slice_gives_are_refused_by_name(vary, knobs, key):
    with pytest.raises(NotElastic) as error:
        check_elastic(arch_file(vary, **knobs))
    assert error.value.key == key and "allowed" in error.value.message
    assert "\n" not in str(error.value)


def test_random_members_cover_each_choice_and_repeat_with_the_seed():
    space = arch_file()
    draws = [random_params(space, random.Random(5)) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = random.Random(0)
    seen = {random_params(space, rng)["depth"] for _ in range(200)}
    assert seen == {0.5, 0.75, 1.0}


def test_each_sandwich_step_runs_largest_then_smallest_then_seeded_draws():
    space = arch_file()
    largest, smallest = (build_spec(corner_knobs(space, largest=b), space.to_table()) for b in (True, False))
    sandwich = Sandwich(largest, smallest, draw=lambda rng: member(space, random_params(space, rng)), random_members=2)
    steps = [SandwichModule(SuperNet(largest), None, sandwich, seed=7).members() for _ in range(2)]
    assert steps[0][:2] == [largest, smallest] and len(steps[0]) == 4
    assert steps[0] == steps[1]


def test_range_without_choices_draws_inside_it():
    space = arch_file({"width": Range(low=0.3, high=0.6).model_dump()})
    values = [random_params(space, random.Random(i))["width"] for i in range(50)]
    assert all(0.3 <= v <= 0.6 for v in values) and len(set(values)) == 50

import json

import pytest

from costmodel.errors import UserError
from costmodel.ir.plan import Fuse, KernelConfig, Plan, Tile, check_fusable, eager_partition, load_plan_file


def first(d, kind, after=0):
    return [v.name for v in d.vertices if v.kind == kind][after]


def test_eager_partition_one_kernel_per_compute_op(capture):
    d = capture("gpt2", 1, 32)
    kernels = eager_partition(d)
    assert len(kernels) == sum(not v.is_free for v in d.vertices)
    assert all(len(k.vertices) == 1 and not k.vertices[0].is_free for k in kernels)
    assert Plan().kernels(d) and [k.subdiagram for k in Plan().kernels(d)] == list(kernels)


def test_fusion_folds_the_views_between_members(capture):
    d = capture("bert-base", 1, 32)
    fc1, gelu = first(d, "matmul", 4), first(d, "gelu")
    group = check_fusable(d, (fc1, gelu))
    assert group[0] == fc1 and group[-1] == gelu
    [k] = [k for k in Plan((Fuse((fc1, gelu)),)).kernels(d) if len(k.subdiagram.vertices) > 1]
    assert k.subdiagram.kinds[0] == "matmul" and k.subdiagram.kinds[-1] == "gelu"
    assert len(Plan((Fuse((fc1, gelu)),)).kernels(d)) == len(eager_partition(d)) - 1


def test_illegal_fusions_are_refused(capture):
    d = capture("bert-base", 1, 32)
    q = first(d, "matmul", 0)
    out_proj = first(d, "matmul", 3)
    with pytest.raises(ValueError, match="cycle"):
        check_fusable(d, (q, out_proj))  # the path runs through attention, outside the group
    with pytest.raises(ValueError, match="two or more"):
        check_fusable(d, (q,))
    with pytest.raises(ValueError, match="no vertex"):
        check_fusable(d, (q, "nope"))
    fc1, gelu, fc2 = first(d, "matmul", 4), first(d, "gelu"), first(d, "matmul", 5)
    with pytest.raises(ValueError, match="two fusion groups"):
        Plan((Fuse((fc1, gelu)), Fuse((gelu, fc2)))).kernels(d)


def test_plan_round_trips_and_is_hashable(tmp_path, capture):
    d = capture("bert-base", 1, 32)
    plan = Plan((Fuse((first(d, "matmul", 4), first(d, "gelu"))),
                 Tile(first(d, "matmul", 0), KernelConfig(64, 128, 32, 4, 3, 2))))
    again = Plan.from_list(json.loads(json.dumps(plan.to_list())))
    assert again == plan and hash(again) == hash(plan)
    configs = [k.config for k in plan.kernels(d) if k.config]
    assert configs == [KernelConfig(64, 128, 32, 4, 3, 2)]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"decisions": plan.to_list()}))
    assert load_plan_file(path)[0] == plan
    path.write_text("[1, 2")
    with pytest.raises(UserError, match="not a valid plan"):
        load_plan_file(path)
    with pytest.raises(UserError, match="does not exist"):
        load_plan_file(tmp_path / "missing.json")

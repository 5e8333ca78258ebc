import dataclasses

import torch
from torch import nn

from costmodel.ir.capture import capture_module
from costmodel.ir.diagram import Diagram


class Block(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(x + self.fc2(torch.nn.functional.gelu(self.fc1(x))))


def block(batch=2, seq=8, d=32) -> Diagram:
    x = torch.zeros(batch, seq, d, device="meta")
    return capture_module(Block(d).to("meta"), (x,), name="block")


def renamed(d: Diagram) -> Diagram:
    """The same diagram with every vertex and propagator renamed and the module paths changed."""
    names = {p.name: f"t{i}" for i, p in enumerate(reversed(d.propagators))}
    names.update({v.name: f"v{i}" for i, v in enumerate(reversed(d.vertices))})
    verts = tuple(dataclasses.replace(v, name=names[v.name], module="elsewhere." + v.module,
                                      inputs=tuple(names[i] for i in v.inputs),
                                      outputs=tuple(names[o] for o in v.outputs))
                  for v in d.vertices)
    props = tuple(dataclasses.replace(p, name=names[p.name],
                                      producer=names.get(p.producer) if p.producer else None)
                  for p in d.propagators)
    return dataclasses.replace(d, name="other", vertices=verts, propagators=props,
                               inputs=tuple(names[i] for i in d.inputs),
                               outputs=tuple(names[o] for o in d.outputs))


def test_hash_ignores_names_but_not_shapes():
    d = block()
    assert renamed(d).hash == d.hash
    assert block(seq=16).hash != d.hash
    assert block(d=64).hash != d.hash
    assert block().hash == d.hash  # stable across captures


def test_subdiagram_hash_is_the_same_in_every_layer(capture):
    d = capture("bert-base", 1, 32)
    attn = [v.name for v in d.vertices if v.kind == "attention"]
    hashes = {d.subdiagram([n]).hash for n in attn}
    assert len(hashes) == 1
    r = renamed(d)
    assert r.subdiagram([r.vertices[d.vertices.index(d.vertex[attn[0]])].name]).hash in hashes


def test_hash_sees_structure():
    d = block()
    v = d.vertices
    # Two different kernels of the same op kind hash differently (fc1 and fc2 differ in shape).
    matmuls = [x.name for x in v if x.kind == "matmul"]
    assert d.subdiagram([matmuls[0]]).hash != d.subdiagram([matmuls[1]]).hash
    # add(x, x) is not add(x, y): same shapes, different wiring.
    class Twice(nn.Module):
        def forward(self, x, y):
            return x + (x if self.same else y)
    a, b = Twice(), Twice()
    a.same, b.same = True, False
    x, y = torch.zeros(4, 4, device="meta"), torch.zeros(4, 4, device="meta")
    assert capture_module(a, (x, y), name="a").hash != capture_module(b, (x, y), name="b").hash


def test_values_are_frozen():
    d = block()
    for obj in (d, d.vertices[0], d.propagators[0], d.subdiagram([d.vertices[0].name])):
        try:
            obj.name = "changed"
        except dataclasses.FrozenInstanceError:
            continue
        raise AssertionError(f"{type(obj).__name__} is mutable")


def test_fused_subdiagram_keeps_intermediates_on_chip():
    d = block()
    fc1 = next(v for v in d.vertices if v.kind == "matmul")
    gelu = next(v for v in d.vertices if v.kind == "gelu")
    alone = d.subdiagram([fc1.name]).bytes_written + d.subdiagram([gelu.name]).bytes_read
    fused = d.subdiagram([fc1.name, gelu.name])
    assert fused.flops == fc1.flops + gelu.flops
    assert fused.bytes_read == fc1.bytes_read  # the matmul output is never read back
    assert fused.bytes_written == gelu.bytes_written
    assert alone > 0 and [p.name for p in fused.internal] == list(fc1.outputs)


def test_json_round_trips_the_essentials():
    d = block()
    doc = d.to_dict()
    assert doc["hash"] == d.hash
    assert len(doc["vertices"]) == len(d.vertices)
    assert {p["name"] for p in doc["propagators"]} == {p.name for p in d.propagators}


def test_subdiagram_record_round_trips(capture):
    import json

    from costmodel.ir.plan import eager_partition

    for sub in eager_partition(capture("gpt2", 1, 32)):
        again = type(sub).from_record(json.loads(json.dumps(sub.to_record())))
        assert again == sub and again.hash == sub.hash

"""The flash attention kernel against its PyTorch reference under Triton's interpreter: every mask
kind, fp32 and fp16, blocks skipped or computed, grouped-query heads, queries fewer than keys;
and proof that skipping skips: keys and values the mask zeroes are poisoned with NaN, which only
an unskipped block would read."""
import math

import pytest
import torch

from costmodel.ir import rules
from costmodel.ir.plan import KernelConfig
from tests.costmodel.kernels.interpreter import DTYPES, close

B, H, SQ, D = 2, 2, 40, 16
BLOCK = KernelConfig(16, 16, 16, num_warps=4, num_stages=1)
SKIP = KernelConfig(16, 16, 16, num_warps=4, num_stages=1, skip_masked=True)


@pytest.fixture
def kernels(interpreted):
    return interpreted["attention"]


def _qkv(dtype, sq=SQ, sk=SQ, heads_kv=H):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, sq, D, generator=g).to(dtype)
    k, v = (torch.randn(B, heads_kv, sk, D, generator=g).to(dtype) for _ in range(2))
    return q, k, v


MASKS = {"none": {}, "causal": {}, "padding": {"key_lengths": torch.tensor([40, 23])},
         "scgpt": {"context": 13}}


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("config", [BLOCK, SKIP], ids=["every-block", "skip-masked"])
def test_every_mask_matches_the_reference(kernels, dtype, tol, mask, config):
    q, k, v = _qkv(dtype)
    out = kernels.attention(q, k, v, config=config, mask=mask, **MASKS[mask])
    close(out, kernels.reference(q, k, v, mask=mask, **MASKS[mask]), tol)


def test_the_reference_is_sdpa_with_the_dense_mask(kernels):
    """The reference's masks are the ones the IR names: sdpa with each as a dense boolean mask."""
    q, k, v = _qkv(torch.float32)
    for mask, extra in MASKS.items():
        dense = kernels.mask_tensor(mask, SQ, SQ, batch=B, **extra)
        close(kernels.reference(q, k, v, mask=mask, **extra),
              torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense), 1e-5)


@pytest.mark.parametrize("mask", ["none", "causal", "padding"])
def test_grouped_heads_fewer_queries_and_a_scale(kernels, mask):
    q, k, v = _qkv(torch.float32, sq=24, sk=40, heads_kv=1)
    extra = MASKS[mask]
    out = kernels.attention(q, k, v, config=SKIP, mask=mask, scale=0.3, **extra)
    close(out, kernels.reference(q, k, v, mask=mask, scale=0.3, **extra), 1e-4)


@pytest.mark.parametrize("mask", ["causal", "padding", "scgpt"])
def test_skipped_blocks_are_never_read(kernels, mask):
    """The key blocks the rule book says the mask empties for the first query block hold NaN.
    For every query block they are all empty for, skipping gives the reference's rows; without
    skipping the NaN reaches those rows (the blocks were read)."""
    n, bm, bn = 48, BLOCK.block_m, BLOCK.block_n
    q, k, v = _qkv(torch.float32, sq=n, sk=n)
    extra = MASKS[mask]
    context = extra.get("context", 0)
    lengths = [int(x) for x in extra["key_lengths"]] if mask == "padding" else [n] * B

    def kept(b, i, j):
        return rules.block_kept(mask, i, j, bm, bn, n, n, context) and j * bn < lengths[b]

    clean_k, clean_v = k.clone(), v.clone()
    checked = []
    for b in range(B):
        poisoned = [j for j in range(math.ceil(n / bn)) if not kept(b, 0, j)]
        for j in poisoned:
            k[b, :, j * bn:(j + 1) * bn] = v[b, :, j * bn:(j + 1) * bn] = float("nan")
        checked += [(b, i) for i in range(math.ceil(n / bm))
                    if poisoned and not any(kept(b, i, j) for j in poisoned)]
    assert checked  # the case has blocks to skip
    ref = kernels.reference(q, clean_k, clean_v, mask=mask, **extra)
    skipped = kernels.attention(q, k, v, config=SKIP, mask=mask, **extra)
    computed = kernels.attention(q, k, v, config=BLOCK, mask=mask, **extra)
    for b, i in checked:
        rows = slice(i * bm, (i + 1) * bm)
        close(skipped[b, :, rows], ref[b, :, rows], 1e-4)
        assert computed[b, :, rows].isnan().any()


def test_a_row_with_no_key_is_zero(kernels):
    q, k, v = _qkv(torch.float32)
    out = kernels.attention(q, k, v, config=SKIP, mask="padding", key_lengths=torch.tensor([0, 5]))
    assert out[0].abs().max() == 0 and out[1].abs().max() > 0


def test_bad_calls_say_what_is_wrong(kernels):
    q, k, v = _qkv(torch.float32)
    with pytest.raises(ValueError, match="no mask 'sliding'; valid: none, causal"):
        kernels.attention(q, k, v, config=BLOCK, mask="sliding")
    with pytest.raises(ValueError, match="needs key_lengths"):
        kernels.attention(q, k, v, config=BLOCK, mask="padding")
    with pytest.raises(ValueError, match="cannot attend"):
        kernels.attention(q, k[:, :, :, :8], v, config=BLOCK)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("mask", list(MASKS))
def test_compiled_on_the_gpu(compiled, dtype, mask):
    kernels = compiled["attention"]
    q, k, v = (t.cuda() for t in _qkv(dtype, sq=200, sk=200))
    extra = {key: (val.cuda() if isinstance(val, torch.Tensor) else val) for key, val in MASKS[mask].items()}
    for config in (KernelConfig(64, 64, 16, 4, 2, skip_masked=True), KernelConfig(128, 64, 16, 8, 3)):
        close(kernels.attention(q, k, v, config=config, mask=mask, **extra),
              kernels.reference(q, k, v, mask=mask, **extra), 2e-2)

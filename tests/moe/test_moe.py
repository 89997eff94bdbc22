"""MoE layer vs transformers' MixtralSparseMoeBlock, the aux loss, and kernel equivalence (CPU, fp32)."""

from __future__ import annotations

import sys

import pytest
import torch
from torch.testing import assert_close
from torch.utils.checkpoint import checkpoint
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from sphinxx.model import moe as moe_module
from sphinxx.model import moe_kernels
from sphinxx.model.moe import MoE, MoEArgs, load_balancing_loss
from sphinxx.model.moe_convert import mixtral_experts_from_hf
from tests.moe._helpers import PREFIX, E, F, H, K, hf_block, hf_state, ours_from

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.mark.parametrize("kernel", ["loop", "grouped"])
def test_matches_transformers_block(kernel: str) -> None:
    hf = hf_block(seed=1)
    ours = ours_from(hf_state(hf), kernel=kernel)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 40, H, generator=gen)
    x_hf, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_hf = hf(x_hf)
    y_ours, _ = ours(x_ours)
    assert_close(y_ours, y_hf, **TOL)

    grad_out = torch.randn(y_hf.shape, generator=gen)
    (y_hf * grad_out).sum().backward()
    (y_ours * grad_out).sum().backward()
    assert_close(x_ours.grad, x_hf.grad, **TOL)
    # Put HF's weight grads through the same converter as the weights, then compare per name.
    hf_grads = {f"{PREFIX}mlp.{n}": p.grad for n, p in hf.named_parameters()}
    expected = mixtral_experts_from_hf(hf_grads, PREFIX, E)
    for name, p in ours.named_parameters():
        assert_close(p.grad, expected[name], **TOL, msg=f"grad of {name}")


def _aux_by_hand(x: torch.Tensor, router_w: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """docs/moe.md, "Load-balancing loss" written out independently of the layer:
    one-hot counts, fp32 softmax."""
    tokens = x.reshape(-1, H)
    keep = torch.ones(tokens.shape[0], dtype=torch.bool) if mask is None else mask.reshape(-1)
    probs = (tokens @ router_w.t()).float().softmax(-1)[keep]
    top = probs.topk(K, dim=-1).indices
    counts = torch.nn.functional.one_hot(top, E).sum(dim=(0, 1)).float()
    num_tokens = probs.shape[0]
    return E / (num_tokens * K) * (counts * probs.mean(0)).sum()


@pytest.mark.parametrize("with_mask", [False, True])
def test_aux_loss_formula_and_hf_identity(with_mask: bool) -> None:
    hf = hf_block(seed=3)
    coef, num_layers = 0.01, 4
    ours = ours_from(hf_state(hf), aux_loss_coef=coef, num_layers=num_layers)
    x = torch.randn(2, 24, H, generator=torch.Generator().manual_seed(4))
    mask = None
    if with_mask:  # right padding: 24 and 17 valid positions
        mask = torch.arange(24)[None, :] < torch.tensor([[24], [17]])
    _, aux = ours(x, token_mask=mask)
    expected = _aux_by_hand(x, hf.gate.weight.detach(), mask)
    assert_close(aux, coef * expected / num_layers, rtol=1e-6, atol=0)
    # One layer of HF's pooled loss has no 1/k and no weight: HF = k * ours / w
    # (docs/moe.md, "Load-balancing loss").
    logits = (x.reshape(-1, H) @ hf.gate.weight.detach().t(),)
    hf_loss = load_balancing_loss_func(logits, E, K, attention_mask=None if mask is None else mask.long())
    assert_close(hf_loss, K * aux * num_layers / coef, rtol=1e-5, atol=0)
    # Metrics: counts over unpadded tokens, k per token.
    assert ours.tokens_per_expert.sum().item() == K * (
        x.shape[0] * x.shape[1] if mask is None else mask.sum()
    )


def test_aux_is_one_for_uniform_routing_and_padding_is_excluded() -> None:
    num_tokens = 32
    probs = torch.full((num_tokens, E), 1.0 / E)
    ids = (torch.arange(num_tokens * K) % E).view(num_tokens, K)  # every expert gets T*k/E rows
    loss, counts = load_balancing_loss(probs, ids, E)
    assert loss.item() == pytest.approx(1.0)
    assert counts.tolist() == [num_tokens * K / E] * E
    # Padding rows routed all to expert 0 change nothing once masked out.
    pad_ids = torch.zeros(8, K, dtype=torch.long)
    pad_probs = torch.nn.functional.one_hot(torch.zeros(8, dtype=torch.long), E).float()
    mask = torch.cat([torch.ones(num_tokens, dtype=torch.bool), torch.zeros(8, dtype=torch.bool)])
    masked, _ = load_balancing_loss(torch.cat([probs, pad_probs]), torch.cat([ids, pad_ids]), E, mask)
    assert masked.item() == pytest.approx(1.0)


def test_activation_checkpoint_recompute_does_not_double_count() -> None:
    ours = ours_from(hf_state(hf_block(seed=5)), kernel="grouped")
    x = torch.randn(2, 16, H, generator=torch.Generator().manual_seed(6))
    results = []
    for use_ckpt in (False, True):
        ours.zero_grad()
        xi = x.clone().requires_grad_()
        y, aux = checkpoint(ours, xi, use_reentrant=False) if use_ckpt else ours(xi)
        (y.square().mean() + aux).backward()
        grads = [p.grad.clone() for p in ours.parameters()]
        results.append((y.detach(), aux.detach(), xi.grad, grads, ours.tokens_per_expert.clone()))
    (y0, a0, g0, p0, c0), (y1, a1, g1, p1, c1) = results
    assert torch.equal(y0, y1) and torch.equal(a0, a1) and torch.equal(c0, c1)
    assert_close(g1, g0, rtol=0, atol=0)
    for a, b in zip(p0, p1, strict=True):
        assert_close(b, a, rtol=0, atol=0)


def _kernel_case(counts: list[int], seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(sum(counts), H, generator=gen)
    w1, v1, w2 = (torch.randn(E * F, H, generator=gen) * 0.1 for _ in range(3))
    return rows, torch.tensor(counts), w1, v1, w2


@pytest.mark.parametrize(
    "counts",
    [[5, 0, 17, 3, 0, 9, 1, 12], [0, 0, 0, 40, 0, 0, 0, 0], [0] * E],
    ids=["some-empty", "all-to-one", "no-rows"],
)
def test_loop_equals_grouped_kernel(counts: list[int]) -> None:
    results = []
    for glu in (moe_kernels.glu_loop, moe_kernels.glu_grouped):
        rows, cnt, *weights = (
            t.clone().requires_grad_(t.is_floating_point()) for t in _kernel_case(counts, 7)
        )
        out = glu(rows, cnt, *weights)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach(), rows.grad, *(w.grad for w in weights)])
    for a, b in zip(*results, strict=True):
        assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("frozen", ["rows", "w1", "all-weights"])
def test_grouped_kernel_with_frozen_inputs_equals_loop(frozen: str) -> None:
    """The CPU segment kernel's backward computes only the gradients asked for, and those equal loop's."""
    results = []
    for glu in (moe_kernels.glu_loop, moe_kernels.glu_grouped):
        rows, cnt, w1, v1, w2 = _kernel_case([5, 0, 17, 3, 0, 9, 1, 12], 13)
        trainable = {"rows": rows, "w1": w1, "v1": v1, "w2": w2}
        for name in {"rows": ["rows"], "w1": ["w1"], "all-weights": ["w1", "v1", "w2"]}[frozen]:
            trainable.pop(name)
        for t in trainable.values():
            t.requires_grad_()
        out = glu(rows, cnt, w1, v1, w2)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        assert all(t.grad is None for t in (rows, w1, v1, w2) if not t.requires_grad)
        results.append([out.detach(), *(t.grad for t in trainable.values())])
    for a, b in zip(*results, strict=True):
        assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_grouped_kernel_bf16_is_close_to_fp32_loop() -> None:
    rows, cnt, *weights = _kernel_case([5, 0, 17, 3, 0, 9, 1, 12], 17)
    results = []
    for glu, dtype in ((moe_kernels.glu_loop, torch.float32), (moe_kernels.glu_grouped, torch.bfloat16)):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (rows, *weights)]
        out = glu(leaves[0], cnt, *leaves[1:])
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.float(), *(t.grad.float() for t in leaves)])
    for ref, got in zip(*results, strict=True):
        assert torch.linalg.norm(got - ref) <= 2e-2 * torch.linalg.norm(ref)


def test_layer_loop_equals_grouped_with_idle_experts() -> None:
    """All tokens prefer experts 2 and 5 (router rows aligned with the inputs): 6 experts get nothing."""
    state = hf_state(hf_block(seed=8))
    direction = torch.randn(H, generator=torch.Generator().manual_seed(9))
    gate = torch.zeros(E, H)
    gate[2], gate[5] = 3 * direction, 2 * direction
    state[f"{PREFIX}mlp.gate.weight"] = gate
    x = direction + 0.05 * torch.randn(4, 8, H, generator=torch.Generator().manual_seed(10))
    outs = []
    for kernel in ("loop", "grouped"):
        moe = ours_from(state, kernel=kernel)
        xi = x.clone().requires_grad_()
        y, aux = moe(xi)
        (y.sum() + aux).backward()
        outs.append([y, xi.grad, *(p.grad for p in moe.parameters())])
    assert (moe.tokens_per_expert > 0).sum() == 2
    for a, b in zip(*outs, strict=True):
        assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_auto_falls_back_to_loop_for_fp64_and_grouped_refuses() -> None:
    ours64 = ours_from(hf_state(hf_block(seed=11))).double()
    x = torch.randn(2, 8, H, dtype=torch.float64)
    with pytest.warns(UserWarning, match="'loop' kernel"):
        y_auto, _ = ours64(x)
    ours64.args.kernel = "loop"
    assert torch.equal(ours64(x)[0], y_auto)
    ours64.args.kernel = "grouped"
    with pytest.raises(ValueError, match="grouped_mm"):
        ours64(x)


def test_megablocks_on_cpu_raises_import_error_with_install_hint() -> None:
    moe = MoE(MoEArgs(H, F, kernel="megablocks"))
    with pytest.raises(ImportError, match=r"pip install --no-deps --no-build-isolation megablocks==0\.10\.0"):
        moe(torch.randn(1, 4, H))


def test_running_the_layer_never_imports_megablocks() -> None:
    MoE(MoEArgs(H, F))(torch.randn(1, 4, H))  # kernel "auto" on CPU
    assert not [k for k in sys.modules if k.split(".")[0] in ("megablocks", "stk", "grouped_gemm")]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_experts": 8, "ep_size": 3}, "divisible"),
        ({"top_k": 9}, "top_k"),
        ({"kernel": "triton"}, "unknown MoE kernel"),
        ({"num_layers": 0}, "num_layers"),
    ],
)
def test_args_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MoEArgs(H, F, **kwargs)


def test_grouped_mm_alias_and_ep_param_shapes() -> None:
    args = MoEArgs(H, F, kernel="grouped_mm", ep_size=4)
    assert args.kernel == "grouped"
    moe = MoE(args)
    assert moe.experts.mlp.w1.shape == (2 * F, H)
    assert moe.router.layer.weight.shape == (E, H)


@pytest.mark.parametrize("block_rows", [8, 512], ids=["several-blocks", "one-block"])
@pytest.mark.parametrize("frozen", ["none", "rows", "weights"])
def test_weighted_combine_equals_autograd_of_index_add(monkeypatch, block_rows: int, frozen: str) -> None:
    """The layer's combine (its own backward, blocks of rows on CPU) against autograd through the plain
    expression: every token gets some rows, some none; 37 rows is not a multiple of the block."""
    monkeypatch.setattr(moe_module, "CPU_BLOCK_ROWS", block_rows)
    gen = torch.Generator().manual_seed(21)
    num_tokens, num_rows = 15, 37
    y0, w0 = torch.randn(num_rows, H, generator=gen), torch.rand(num_rows, generator=gen)
    src = torch.randint(0, num_tokens - 2, (num_rows,), generator=gen)  # the last two tokens get no rows
    grad = torch.randn(num_tokens, H, generator=gen)
    results = []
    for combine in (
        lambda y, w: torch.zeros(num_tokens, H).index_add(0, src, y * w[:, None]),
        lambda y, w: moe_module._WeightedCombine.apply(y, w, src, num_tokens),
    ):
        y, w = y0.clone().requires_grad_(frozen != "rows"), w0.clone().requires_grad_(frozen != "weights")
        out = combine(y, w)
        out.backward(grad)
        assert (y.grad is None) == (frozen == "rows") and (w.grad is None) == (frozen == "weights")
        results.append([out.detach(), y.grad, w.grad])
    assert torch.equal(results[1][0][-2:], torch.zeros(2, H))
    for ref, got in zip(*results, strict=True):
        assert (ref is None) == (got is None)
        if ref is not None:
            assert_close(got, ref, rtol=1e-5, atol=1e-6)

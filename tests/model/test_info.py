"""`model_info`: parameter counts of every published flavor, visual tokens, FLOPs sanity.

References: LLM sizes from the HF configs (docs/model.md, "Flavors", worked out by hand
there); tower sizes from closed-form formulas of the architectures written here; open_clip's
`docs/model_profile.csv` row for convnext_xxlarge (846.54M image params, 395.94 image GFLOPs at
256 px, both including the 3072 x 1024 projection SPHINX drops).
"""

from __future__ import annotations

import pytest

from sphinxx.model.info import model_info

LLM = {
    "tinyllama-1.1b": (1_100_048_384, 1_100_048_384, 2048),
    "internlm2-7b": (7_737_708_544, 7_737_708_544, 4096),
    "llama2-13b": (13_015_864_320, 13_015_864_320, 5120),
    "llama2-13b-2k": (13_015_864_320, 13_015_864_320, 5120),
    "mixtral-8x7b": (46_702_792_704, 12_879_925_248, 4096),
}
OPEN_CLIP_PROJ = 3072 * 1024


def convnext_xxlarge_params() -> int:
    """timm ConvNeXt trunk with its head norm: stem, downsamples, blocks (dw 7x7, LN, MLP 4x, gamma)."""
    dims, depths = (384, 768, 1536, 3072), (3, 4, 30, 3)
    total = 3 * 4 * 4 * dims[0] + dims[0] + 2 * dims[0]  # stem conv + LayerNorm
    for i, (c, depth) in enumerate(zip(dims, depths, strict=True)):
        if i:
            total += 2 * dims[i - 1] + 4 * dims[i - 1] * c + c  # LayerNorm + 2x2 conv
        total += depth * (49 * c + c + 2 * c + (4 * c * c + 4 * c) + (4 * c * c + c) + c)
    return total + 2 * dims[-1]  # head norm


def dinov2_giant_params() -> int:
    d, layers, ffn = 1536, 40, 4096  # SwiGLU hidden: (int(4d * 2/3) + 7) // 8 * 8
    total = 3 * 14 * 14 * d + d + d + d + (37 * 37 + 1) * d  # patch conv, cls, mask token, positions
    per_layer = 2 * d + 4 * (d * d + d) + d + 2 * d + 2 * (d * ffn + ffn) + (ffn * d + d) + d
    return total + layers * per_layer + 2 * d


@pytest.mark.parametrize("flavor", sorted(LLM))
def test_published_flavor_counts(flavor: str) -> None:
    info = model_info(flavor)
    p = info["params"]
    llm_total, llm_active, dim = LLM[flavor]
    assert p["llm"] == llm_total and p["llm_active"] == llm_active
    assert p["projector"] == 4608 * dim + dim + 2 * dim
    assert p["tags"] == 3 * dim
    assert p["convnext"] == convnext_xxlarge_params() == 843_398_016
    assert round((p["convnext"] + OPEN_CLIP_PROJ) / 1e6, 2) == 846.54  # open_clip model_profile.csv
    assert p["dinov2"] == dinov2_giant_params() == 1_136_480_768
    assert p["trainable"] == llm_total + p["projector"] + p["tags"]
    assert p["total"] == p["trainable"] + p["convnext"] + p["dinov2"]
    canvas = 672 if flavor.endswith("-2k") else 448
    assert info["canvas"] == canvas
    assert info["visual_tokens"]["1:1"] == (1295 if canvas == 448 else 2590)
    assert info["visual_tokens"]["2:1"] == (779 if canvas == 448 else 1816)


def test_vision_flops_match_open_clip_profile() -> None:
    flops = model_info("tinyllama-1.1b")["flops"]
    with_proj = flops["vision_forward_per_view_convnext"] + 2 * OPEN_CLIP_PROJ
    assert abs(with_proj / 1e9 - 395.94) < 0.01


def test_llm_flops_formula() -> None:
    info = model_info("tinyllama-1.1b", seq_len=2048)
    p, f = info["params"], info["flops"]
    n = p["llm_active"] - 32000 * 2048  # no matmul for the embedding lookup
    assert f["llm_train_per_token"] == 6 * n + 12 * 22 * 2048 * 2048
    assert 7.2e9 < f["llm_train_per_token"] < 7.4e9  # 6 x 1.035B + 1.1e9 attention at T = 2048


def test_image_report() -> None:
    info = model_info("sphinx-tiny", image=(1000, 500))
    assert info["flavor"] == "tinyllama-1.1b"
    image = info["image"]
    assert (image["visual_tokens"], image["real_views"], image["skipped_views"]) == (779, 3, 2)
    assert image["vision_forward_flops"] == 3 * info["flops"]["vision_forward_per_view"]


def test_debug_and_unknown() -> None:
    info = model_info("debug")
    assert info["params"]["llm"] == info["params"]["llm_active"]
    with pytest.raises(ValueError, match="unknown flavor"):
        model_info("gpt-5")

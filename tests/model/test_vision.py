"""Vision towers: DINOv2 parity with transformers, ConvNeXt adapter coverage and numerics, fusion.

The open_clip/timm names below are written from timm `models/convnext.py` (stem.0 conv, stem.1
LayerNorm2d, stages.i.downsample.{0 norm, 1 conv} for i > 0, stages.i.blocks.j.{conv_dw, norm,
mlp.fc1, mlp.fc2, gamma}, head.norm) and open_clip `timm_model.py` (trunk under `visual.trunk.`,
projection `visual.head.proj`, no bias). The reference ConvNeXt forward is a separate functional
implementation of that architecture with timm's eps 1e-5, not our module.

[U] Parity with real weights (open_clip convnext_xxlarge / torch.hub dinov2_vitg14) needs the
checkpoints and open_clip; it is checked once on a machine that has them (docs/model.md, "Vision towers").
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sphinxx.model.anyres import CLIP_MEAN, CLIP_STD
from sphinxx.model.vision import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VISION_PRESETS,
    ConvNextTower,
    ConvNextTowerArgs,
    Dinov2Tower,
    VisionEncoders,
    convnext_from_open_clip,
    dinov2_from_hf,
    load_vision_weights,
    read_state_dict,
)

DEBUG = VISION_PRESETS["debug"]


def timm_convnext_state(
    args: ConvNextTowerArgs, device: str = "cpu", seed: int = 0
) -> dict[str, torch.Tensor]:
    """open_clip-style checkpoint dict for a timm ConvNeXt of this shape (random values)."""
    gen = torch.Generator().manual_seed(seed)

    def t(*shape: int, scale: float = 0.2) -> torch.Tensor:
        if device == "meta":
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=gen) * scale

    dims = args.hidden_sizes
    sd = {
        "visual.trunk.stem.0.weight": t(dims[0], 3, 4, 4),
        "visual.trunk.stem.0.bias": t(dims[0]),
        "visual.trunk.stem.1.weight": 1 + t(dims[0]),
        "visual.trunk.stem.1.bias": t(dims[0]),
    }
    for i, (depth, dim) in enumerate(zip(args.depths, dims, strict=True)):
        p = f"visual.trunk.stages.{i}"
        if i > 0:
            sd[f"{p}.downsample.0.weight"] = 1 + t(dims[i - 1])
            sd[f"{p}.downsample.0.bias"] = t(dims[i - 1])
            sd[f"{p}.downsample.1.weight"] = t(dim, dims[i - 1], 2, 2)
            sd[f"{p}.downsample.1.bias"] = t(dim)
        for j in range(depth):
            b = f"{p}.blocks.{j}"
            sd[f"{b}.conv_dw.weight"] = t(dim, 1, 7, 7)
            sd[f"{b}.conv_dw.bias"] = t(dim)
            sd[f"{b}.norm.weight"] = 1 + t(dim)
            sd[f"{b}.norm.bias"] = t(dim)
            sd[f"{b}.mlp.fc1.weight"] = t(4 * dim, dim)
            sd[f"{b}.mlp.fc1.bias"] = t(4 * dim)
            sd[f"{b}.mlp.fc2.weight"] = t(dim, 4 * dim)
            sd[f"{b}.mlp.fc2.bias"] = t(dim)
            sd[f"{b}.gamma"] = t(dim, scale=0.5)
    sd["visual.trunk.head.norm.weight"] = 1 + t(dims[-1])
    sd["visual.trunk.head.norm.bias"] = t(dims[-1])
    sd["visual.head.proj.weight"] = t(1024, dims[-1])  # CLIP projection: dropped by SPHINX
    sd["text.token_embedding.weight"] = t(8, 4)  # text tower keys are ignored
    sd["logit_scale"] = t(1)
    return sd


def reference_convnext(sd: dict[str, torch.Tensor], args: ConvNextTowerArgs, x: torch.Tensor) -> torch.Tensor:
    """timm ConvNeXt trunk + per-position head norm + 2x nearest + GAP, written independently."""
    eps = 1e-5
    w = {k.removeprefix("visual.trunk."): v for k, v in sd.items()}

    def ln2d(x: torch.Tensor, prefix: str) -> torch.Tensor:  # LayerNorm over channels of NCHW
        return F.layer_norm(
            x.permute(0, 2, 3, 1), x.shape[1:2], w[prefix + ".weight"], w[prefix + ".bias"], eps
        ).permute(0, 3, 1, 2)

    x = F.conv2d(x, w["stem.0.weight"], w["stem.0.bias"], stride=4)
    x = ln2d(x, "stem.1")
    for i, depth in enumerate(args.depths):
        p = f"stages.{i}"
        if i > 0:
            x = ln2d(x, f"{p}.downsample.0")
            x = F.conv2d(x, w[f"{p}.downsample.1.weight"], w[f"{p}.downsample.1.bias"], stride=2)
        for j in range(depth):
            b = f"{p}.blocks.{j}"
            y = F.conv2d(x, w[f"{b}.conv_dw.weight"], w[f"{b}.conv_dw.bias"], padding=3, groups=x.shape[1])
            y = y.permute(0, 2, 3, 1)
            y = F.layer_norm(y, y.shape[-1:], w[f"{b}.norm.weight"], w[f"{b}.norm.bias"], eps)
            y = F.linear(
                F.gelu(F.linear(y, w[f"{b}.mlp.fc1.weight"], w[f"{b}.mlp.fc1.bias"])),
                w[f"{b}.mlp.fc2.weight"],
                w[f"{b}.mlp.fc2.bias"],
            )
            x = x + (y * w[f"{b}.gamma"]).permute(0, 3, 1, 2)
    x = ln2d(x, "head.norm")  # [N, C, 8, 8] at 256 px
    x = x.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)  # as the released llama_ens5.py
    tokens = x.flatten(2).transpose(1, 2)
    return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)


def test_convnext_adapter_covers_every_xxlarge_key() -> None:
    args = ConvNextTowerArgs()  # the real convnext_xxlarge shapes, on the meta device
    mapped = convnext_from_open_clip(timm_convnext_state(args, device="meta"))
    with torch.device("meta"):
        tower = ConvNextTower(args)
    expected = {k: v.shape for k, v in tower.model.state_dict().items()}
    assert set(mapped) == set(expected)
    assert {k: v.shape for k, v in mapped.items()} == expected
    assert sum(v.numel() for v in mapped.values()) == 843_398_016


def test_convnext_tower_matches_independent_timm_forward(tmp_path) -> None:
    args = DEBUG.convnext
    sd = timm_convnext_state(args)
    path = str(tmp_path / "open_clip_pytorch_model.bin")
    torch.save(sd, path)
    vision = VisionEncoders(DEBUG)
    load_vision_weights(vision, convnext_path=path, dinov2_path=None)
    x = torch.randn(3, 3, 256, 256)
    ours = vision.convnext(x)
    assert ours.shape == (3, 257, args.out_dim)
    torch.testing.assert_close(ours, reference_convnext(sd, args, x), atol=1e-4, rtol=1e-4)


def test_convnext_adapter_rejects_foreign_keys() -> None:
    with pytest.raises(ValueError, match="not an open_clip"):
        convnext_from_open_clip({"encoder.layer.0.weight": torch.zeros(1)})
    sd = timm_convnext_state(DEBUG.convnext)
    sd["visual.trunk.stages.0.blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unmapped"):
        convnext_from_open_clip(sd)


def test_dinov2_wrapper_equals_transformers() -> None:
    from transformers import Dinov2Model

    torch.manual_seed(0)
    tower = Dinov2Tower(DEBUG.dinov2).eval()
    reference = Dinov2Model(tower.model.config).eval()
    reference.load_state_dict(tower.model.state_dict())
    raw = torch.rand(2, 3, 224, 224)
    clip = (raw - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    imagenet = (raw - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        ours = tower(clip)
        want = reference(pixel_values=imagenet).last_hidden_state
    assert ours.shape == (2, 257, DEBUG.dinov2.hidden_size)
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)


def _hub_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Current transformers names -> the Hub file layout of facebook/dinov2-* (transformers 4.x)."""
    out = {}
    for key, value in state.items():
        if ".mlp.up_proj." in key:
            continue
        if ".mlp.gate_proj." in key:
            up = state[key.replace("gate_proj", "up_proj")]
            out[key.replace("mlp.gate_proj.", "mlp.weights_in.")] = torch.cat([value, up])
            continue
        key = key.replace("attention.q_proj.", "attention.attention.query.")
        key = key.replace("attention.k_proj.", "attention.attention.key.")
        key = key.replace("attention.v_proj.", "attention.attention.value.")
        key = key.replace("attention.o_proj.", "attention.output.dense.")
        key = key.replace("mlp.down_proj.", "mlp.weights_out.")
        out[key] = value.clone()
    return out


def test_dinov2_hub_layout_loads_like_transformers(tmp_path) -> None:
    """Our adapter and transformers' own from_pretrained conversion agree on a Hub-layout file."""
    from safetensors.torch import save_file
    from transformers import Dinov2Model

    torch.manual_seed(1)
    source = Dinov2Tower(DEBUG.dinov2)
    source.model.config.save_pretrained(tmp_path)
    save_file(_hub_layout(source.model.state_dict()), str(tmp_path / "model.safetensors"))
    reference = Dinov2Model.from_pretrained(str(tmp_path))
    vision = VisionEncoders(DEBUG)
    load_vision_weights(vision, convnext_path=None, dinov2_path=str(tmp_path))
    ours = vision.dinov2.model.state_dict()
    theirs = reference.state_dict()
    assert set(ours) == set(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    # Current-name files load unchanged.
    assert set(dinov2_from_hf(theirs)) == set(theirs)


def test_fusion_channel_order_and_frozen() -> None:
    torch.manual_seed(0)
    vision = VisionEncoders(DEBUG)
    conv_px = torch.randn(2, 3, 256, 256, requires_grad=True)
    dino_px = torch.randn(2, 3, 224, 224)
    vision.train()  # must stay in eval
    fused = vision(conv_px, dino_px)
    assert not vision.training and not vision.convnext.training
    assert fused.shape == (2, 257, DEBUG.out_dim) and fused.grad_fn is None
    c = DEBUG.convnext.out_dim
    with torch.no_grad():
        torch.testing.assert_close(fused[..., :c], vision.convnext(conv_px))
        torch.testing.assert_close(fused[..., c:], vision.dinov2(dino_px))
    assert not any(p.requires_grad for p in vision.parameters())


def test_read_state_dict_formats(tmp_path) -> None:
    from safetensors.torch import save_file

    sd = {"a.weight": torch.randn(2, 3), "b": torch.arange(4)}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        got = read_state_dict(str(tmp_path / name))
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    with pytest.raises(ValueError, match="does not exist"):
        read_state_dict(str(tmp_path / "missing.bin"))
    with pytest.raises(ValueError, match="no weight file"):
        read_state_dict(str(tmp_path))


def test_wrong_weights_raise(tmp_path) -> None:
    sd = timm_convnext_state(ConvNextTowerArgs(depths=(1, 1, 1, 1), hidden_sizes=(8, 16, 24, 40)))
    torch.save(sd, tmp_path / "bad.bin")
    with pytest.raises(ValueError, match="do not fit"):
        load_vision_weights(VisionEncoders(DEBUG), convnext_path=str(tmp_path / "bad.bin"), dinov2_path=None)

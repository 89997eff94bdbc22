"""The two frozen vision towers of SPHINX-X and the adapters that load their weights.

Why transformers and not open_clip / timm: both import torchvision, which cannot be installed
next to our CPU torch (docs/architecture.md, "Dependencies and pins"). transformers builds both towers
offline from configs:

- CLIP ConvNeXt-XXL (open_clip `convnext_xxlarge`, a timm trunk) as `ConvNextModel`. Its weights
  come from the open_clip checkpoint through `convnext_from_open_clip` (timm names -> HF names).
  timm builds this variant with LayerNorm eps 1e-5 everywhere, while HF ConvNext hard-codes 1e-6
  in its stem, downsampling and block norms, so we set every LayerNorm's eps after building.
- DINOv2 ViT-g/14 as `Dinov2Model`; `dinov2_from_hf` accepts the Hub layout
  (`attention.attention.query`, fused SwiGLU `mlp.weights_in`) and the current transformers names.

Per view (docs/model.md, "Vision towers"), both give 257 positions:
- ConvNeXt: final stride-32 map, the trunk's head LayerNorm applied per position, nearest
  upsampling to the DINOv2 16 x 16 grid (8 x 8 at 256 px -> x2), a GAP token prepended;
- DINOv2: final-normed CLS + patch tokens at 224 px, the input re-normalised CLIP -> ImageNet.
Fused per position as [ConvNeXt | DINOv2] channels (4608 for the real towers).

The towers are frozen: requires_grad False, always in eval mode, run under no_grad. This module
never touches object stores; callers stage weight files locally and pass paths.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from sphinxx.model.anyres import CLIP_MEAN, CLIP_STD

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ConvNextTowerArgs:
    """ConvNeXt trunk shape; defaults are timm/open_clip `convnext_xxlarge`."""

    depths: tuple[int, ...] = (3, 4, 30, 3)  # blocks per stage
    hidden_sizes: tuple[int, ...] = (384, 768, 1536, 3072)  # channels per stage
    layer_norm_eps: float = 1e-5  # timm convnext_xxlarge uses norm_eps 1e-5 in every norm

    @property
    def out_dim(self) -> int:
        return self.hidden_sizes[-1]


@dataclass(frozen=True)
class Dinov2TowerArgs:
    """DINOv2 ViT shape; defaults are `facebook/dinov2-giant` (ViT-g/14, no registers)."""

    hidden_size: int = 1536
    num_layers: int = 40
    num_heads: int = 24
    mlp_ratio: int = 4
    use_swiglu_ffn: bool = True  # ViT-g uses SwiGLU (4096 hidden after the 2/3 rule)
    patch_size: int = 14
    image_size: int = 518  # pretraining resolution; position embeddings are interpolated at 224
    layer_norm_eps: float = 1e-6

    @property
    def out_dim(self) -> int:
        return self.hidden_size


@dataclass(frozen=True)
class VisionArgs:
    """Both towers plus the per-view input sizes."""

    convnext: ConvNextTowerArgs = field(default_factory=ConvNextTowerArgs)
    dinov2: Dinov2TowerArgs = field(default_factory=Dinov2TowerArgs)
    convnext_view_size: int = 256  # 256 -> 8 x 8 map, upsampled x2; 512 -> 16 x 16 natively
    dino_view_size: int = 224  # 16 x 16 patches of 14

    def __post_init__(self) -> None:
        grid = self.token_grid
        if self.dino_view_size % self.dinov2.patch_size:
            raise ValueError(f"dino_view_size {self.dino_view_size} must be a multiple of the patch size")
        conv_grid = self.convnext_view_size // 32
        if self.convnext_view_size % 32 or conv_grid < 1 or grid % conv_grid:
            raise ValueError(
                f"convnext_view_size {self.convnext_view_size} gives a {conv_grid}x{conv_grid} map that does "
                f"not tile the {grid}x{grid} DINOv2 grid; use 256 or 512 with 224 px DINOv2 views"
            )

    @property
    def token_grid(self) -> int:
        return self.dino_view_size // self.dinov2.patch_size

    @property
    def num_tokens(self) -> int:
        return 1 + self.token_grid**2

    @property
    def out_dim(self) -> int:
        return self.convnext.out_dim + self.dinov2.out_dim


VISION_PRESETS: dict[str, VisionArgs] = {
    "convnext-xxl+dinov2-g": VisionArgs(),
    # Tiny random towers with the real geometry (stride-32 map, patch 14, 257 tokens) for CPU tests.
    "debug": VisionArgs(
        convnext=ConvNextTowerArgs(depths=(1, 1, 1, 1), hidden_sizes=(8, 16, 24, 32)),
        dinov2=Dinov2TowerArgs(hidden_size=32, num_layers=2, num_heads=2, mlp_ratio=2),
    ),
}


class ConvNextTower(nn.Module):
    """ConvNeXt trunk -> [N, 1 + grid^2, C]: GAP token + per-position head-normed map."""

    def __init__(self, args: ConvNextTowerArgs, token_grid: int = 16):
        super().__init__()
        # lazy: transformers' model classes take seconds to import; whoever imports sphinx.py only for
        # the batch format or the loss mask (the data pipeline, `sphinxx data ...`) must not pay that.
        from transformers import ConvNextConfig, ConvNextModel

        config = ConvNextConfig(
            depths=list(args.depths),
            hidden_sizes=list(args.hidden_sizes),
            layer_norm_eps=args.layer_norm_eps,
            drop_path_rate=0.0,
        )
        self.model = ConvNextModel(config)
        # HF hard-codes eps 1e-6 in every norm but the last; timm's convnext_xxlarge uses 1e-5.
        for module in self.model.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = args.layer_norm_eps
        self.token_grid = token_grid

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.model.encoder(self.model.embeddings(pixels)).last_hidden_state  # [N, C, h, w]
        # The open_clip trunk's head norm, applied at every position of the map (channels last).
        tokens = self.model.layernorm(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if tokens.shape[-1] != self.token_grid:
            # 8 x 8 at 256 px -> 16 x 16, each position repeated 2 x 2 (nearest), as the released code.
            tokens = F.interpolate(tokens, size=(self.token_grid, self.token_grid), mode="nearest")
        tokens = tokens.flatten(2).transpose(1, 2)  # [N, grid^2, C]
        return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)


class Dinov2Tower(nn.Module):
    """DINOv2 -> [N, 1 + grid^2, C]: final-normed CLS + patch tokens, input re-normalised."""

    def __init__(self, args: Dinov2TowerArgs):
        super().__init__()
        from transformers import Dinov2Config, Dinov2Model  # lazy: as in ConvNextTower

        config = Dinov2Config(
            hidden_size=args.hidden_size,
            num_hidden_layers=args.num_layers,
            num_attention_heads=args.num_heads,
            mlp_ratio=args.mlp_ratio,
            use_swiglu_ffn=args.use_swiglu_ffn,
            patch_size=args.patch_size,
            image_size=args.image_size,
            layer_norm_eps=args.layer_norm_eps,
            drop_path_rate=0.0,
        )
        self.model = Dinov2Model(config)

    def forward(self, clip_pixels: torch.Tensor) -> torch.Tensor:
        # Undo the CLIP normalisation and apply ImageNet's, in fp32. Constants rather than buffers,
        # so a tower built on the meta device needs nothing recomputed after to_empty.
        shape = (1, 3, 1, 1)
        clip_mean = torch.tensor(CLIP_MEAN, device=clip_pixels.device).view(shape)
        clip_std = torch.tensor(CLIP_STD, device=clip_pixels.device).view(shape)
        in_mean = torch.tensor(IMAGENET_MEAN, device=clip_pixels.device).view(shape)
        in_std = torch.tensor(IMAGENET_STD, device=clip_pixels.device).view(shape)
        pixels = (clip_pixels.float() * clip_std + clip_mean - in_mean) / in_std
        dtype = self.model.embeddings.patch_embeddings.projection.weight.dtype
        # last_hidden_state is already the final LayerNorm of CLS + patch tokens.
        return self.model(pixel_values=pixels.to(dtype)).last_hidden_state


class VisionEncoders(nn.Module):
    """Both frozen towers; forward fuses them per position as [ConvNeXt | DINOv2]."""

    def __init__(self, args: VisionArgs):
        super().__init__()
        self.args = args
        self.convnext = ConvNextTower(args.convnext, token_grid=args.token_grid)
        self.dinov2 = Dinov2Tower(args.dinov2)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> VisionEncoders:
        # Frozen towers stay in eval whatever the parent module is switched to.
        return super().train(False)

    @torch.no_grad()
    def forward(self, convnext_pixels: torch.Tensor, dino_pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, cs, cs] and [N, 3, 224, 224] (CLIP-normalised) -> [N, 257, C_convnext + C_dino]."""
        self.train(False)  # eval forced on every call (docs/model.md, "Vision towers")
        conv_dtype = self.convnext.model.embeddings.patch_embeddings.weight.dtype
        conv = self.convnext(convnext_pixels.to(conv_dtype))
        dino = self.dinov2(dino_pixels)
        return torch.cat([conv, dino.to(conv.dtype)], dim=-1)


# ---------------------------------------------------------------------------------------------
# Weight files and key adapters (the only code that knows open_clip/timm and HF Hub names)
# ---------------------------------------------------------------------------------------------

_WEIGHT_FILES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
)


def weight_files(names: Sequence[str]) -> list[str]:
    """The files of a tower's folder that `read_state_dict` reads (from the names it holds): a
    shard index and its shards, else the first of `_WEIGHT_FILES` present; config.json besides.
    A single-file URI (names = [that file]) keeps its file."""
    top = [n for n in names if "/" not in n]
    extra = [n for n in top if n == "config.json"]
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if index in top:
            suffix = ".safetensors" if "safetensors" in index else ".bin"
            return sorted({index, *extra, *(n for n in top if n.endswith(suffix))})
    for name in _WEIGHT_FILES:
        if name in top:
            return sorted({name, *extra})
    return top if len(top) == 1 else []


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors from a local .safetensors / .bin / .pt / .pth file or an HF-style directory."""
    if os.path.isdir(path):
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = os.path.join(path, index_name)
            if os.path.exists(index):
                with open(index) as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
                merged: dict[str, torch.Tensor] = {}
                for shard in shards:
                    merged.update(read_state_dict(os.path.join(path, shard)))
                return merged
        for name in _WEIGHT_FILES:
            if os.path.exists(os.path.join(path, name)):
                return read_state_dict(os.path.join(path, name))
        raise ValueError(f"no weight file in {path}; expected one of {list(_WEIGHT_FILES)} or a shard index")
    if not os.path.exists(path):
        raise ValueError(f"weight file {path} does not exist (stage S3 objects locally before loading)")
    if path.endswith(".safetensors"):
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    # Training checkpoints wrap the weights; DDP adds a "module." prefix.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


# timm ConvNeXt names (open_clip `visual.trunk.*`) -> HF ConvNextModel names, first match wins.
_CONVNEXT_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^stem\.0\.(weight|bias)$"), r"embeddings.patch_embeddings.\1"),
    (re.compile(r"^stem\.1\.(weight|bias)$"), r"embeddings.layernorm.\1"),
    (
        re.compile(r"^stages\.(\d+)\.downsample\.([01])\.(weight|bias)$"),
        r"encoder.stages.\1.downsampling_layer.\2.\3",
    ),
    (
        re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.(weight|bias)$"),
        r"encoder.stages.\1.layers.\2.dwconv.\3",
    ),
    (
        re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.norm\.(weight|bias)$"),
        r"encoder.stages.\1.layers.\2.layernorm.\3",
    ),
    (
        re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$"),
        r"encoder.stages.\1.layers.\2.pwconv1.\3",
    ),
    (
        re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$"),
        r"encoder.stages.\1.layers.\2.pwconv2.\3",
    ),
    (
        re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.gamma$"),
        r"encoder.stages.\1.layers.\2.layer_scale_parameter",
    ),
    (re.compile(r"^head\.norm\.(weight|bias)$"), r"layernorm.\1"),
]


def convnext_from_open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip convnext_xxlarge checkpoint (or a bare timm trunk) -> HF ConvNextModel state dict.

    Keeps `visual.trunk.*` only: the CLIP projection `visual.head.proj` (1024 x 3072, dropped by
    SPHINX) and the text tower are ignored. Unknown trunk keys raise, so a wrong file fails loudly.
    """
    if any(k.startswith("visual.trunk.") for k in state):
        trunk = {
            k.removeprefix("visual.trunk."): v for k, v in state.items() if k.startswith("visual.trunk.")
        }
    elif "stem.0.weight" in state:
        trunk = dict(state)
    else:
        raise ValueError(
            "not an open_clip ConvNeXt checkpoint: no 'visual.trunk.*' (or bare timm 'stem.0.weight') keys"
        )
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in trunk.items():
        for pattern, target in _CONVNEXT_RULES:
            if pattern.match(key):
                out[pattern.sub(target, key)] = value
                break
        else:
            # A classifier head (head.fc) has no counterpart in the feature trunk SPHINX uses.
            if not key.startswith("head.fc."):
                unknown.append(key)
    if unknown:
        raise ValueError(f"unmapped ConvNeXt trunk keys (not a timm ConvNeXt?): {unknown[:8]}")
    return out


# HF Hub DINOv2 names (transformers 4.x layout, as in facebook/dinov2-giant) -> current names.
_DINOV2_RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
    ("mlp.weights_out.", "mlp.down_proj."),
)


def dinov2_from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF Dinov2Model weights, Hub layout or current transformers names -> current names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("dinov2.")  # Dinov2For* checkpoints nest the backbone
        if key.startswith("classifier."):
            continue
        if ".mlp.weights_in." in key:
            # Fused SwiGLU input projection: the first half gates (silu), the second is "up".
            gate, up = value.chunk(2, dim=0)
            out[key.replace("mlp.weights_in.", "mlp.gate_proj.")] = gate
            out[key.replace("mlp.weights_in.", "mlp.up_proj.")] = up
            continue
        for old, new in _DINOV2_RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str, path: str) -> None:
    """Every tensor of `module` from `state`, nothing else, shapes equal (ValueError naming `path`)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{what} weights in {path} do not fit the configured tower: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}; check the vision preset and the file"
        )
    module.load_state_dict(state, strict=True, assign=any(p.is_meta for p in module.parameters()))


def load_vision_weights(vision: VisionEncoders, convnext_path: str | None, dinov2_path: str | None) -> None:
    """Load the towers from local files (open_clip checkpoint; HF DINOv2 file or directory)."""
    if convnext_path:
        load_strict(
            vision.convnext.model,
            convnext_from_open_clip(read_state_dict(convnext_path)),
            "ConvNeXt",
            convnext_path,
        )
    if dinov2_path:
        load_strict(vision.dinov2.model, dinov2_from_hf(read_state_dict(dinov2_path)), "DINOv2", dinov2_path)
    vision.requires_grad_(False)

"""The LLM backbone of SPHINX-X: one LLaMA-architecture decoder for all four bases.

TinyLlama, LLaMA2 and (converted) InternLM2 are this decoder with a dense SwiGLU FFN; Mixtral
swaps the FFN of every block for the MoE layer of `moe.py` (docs/model.md, "The LLM").
Single-device code in the torchtitan style: no parallelism in here, activation checkpointing
is switched on from outside with `apply_activation_checkpointing`, weights are loaded through
`state_dict_adapter.py` (the only place that knows foreign names).

Interface used by the multimodal model (`sphinx.py`) and by generation (`generate.py`):
- `embed(tokens)` -> [B, S, D] token embeddings (image embeddings are spliced in by the caller);
- `forward_hidden(h)` -> (final-normed hidden [B, S, D], aux loss 0-dim tensor);
- `forward_hidden(h, attention_mask=..., cache=...)`: the same with left padding and a KV cache
  (`kv_cache.py`): positions per row from the mask, offset by what the cache holds;
- `output` is applied by the caller at labelled positions only (92544-row vocabularies);
- `forward(tokens)` -> full logits [B, S, V], for parity tests.

RoPE follows the Hugging Face "rotate-half" convention, so HF checkpoints load without the q/k
row permutation that Meta-format weights need. In training attention is plain causal over the
whole sequence; right padding needs no mask because pad positions come after every real token.
Packed rows (several samples per row, `packing.py`) take a block-diagonal causal mask instead.

Build large models on the meta device, then `to_empty` and load (or `init_weights`):

    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device="cuda")
    model.load_state_dict(...)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sphinxx.model.kv_cache import KVCache, LayerCache, attention_bias, position_ids
from sphinxx.model.moe import MoE, MoEArgs
from sphinxx.model.packing import (
    PackedMask,
    SegmentLayout,
    VarlenLayout,
    packed_attention_inputs,
    segment_attention,
    varlen_attention,
)
from sphinxx.schema.decoder import ModelArgs


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, scaled in the input dtype (as HF Llama, so bf16 parity holds)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def rope_cos_sin(
    seq_len: int, head_dim: int, theta: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [seq_len, head_dim] for positions 0..seq_len-1 (rotate-half layout).

    Computed in fp32 on every forward rather than stored as a buffer: it costs one outer product,
    survives meta-device construction untouched, and has no max-length cache to outgrow.
    """
    return rope_cos_sin_at(torch.arange(seq_len, device=device), head_dim, theta, dtype)


def rope_cos_sin_at(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [..., S, head_dim] at integer `positions` [..., S] (per-row positions when
    generating: left padding and a KV cache shift where each row's tokens sit)."""
    device = positions.device
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    freqs = positions.to(torch.float32)[..., None] * inv_freq  # [..., S, head_dim / 2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [..., S, head_dim]: the two halves share frequencies
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, S, head_dim] by position; pairs are (i, i + head_dim / 2).

    cos, sin: [S, head_dim] (every row at positions 0..S-1) or [B, 1, S, head_dim] (per row)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Causal grouped-query attention; query head h reads KV head h // (n_heads / n_kv_heads)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: PackedMask | None = None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """x [B, S, D]. `mask` [B, 1, S, L] (True = may attend; `kv_cache.attention_bias`, or the
        block-diagonal mask of packed rows), the packed rows' spans (`SegmentLayout`: one SDPA call
        per sample) or a `VarlenLayout` (packed rows through flash-attn), None =
        plain causal over x alone; `cache` holds the L - S earlier keys and values of this layer."""
        bsz, seq_len, _ = x.shape
        # [B, S, heads * head_dim] -> [B, heads, S, head_dim]
        q = self.wq(x).view(bsz, seq_len, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)  # the past keys were rotated at their own positions already
        gqa = self.n_kv_heads != self.n_heads
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif isinstance(mask, VarlenLayout):
            out = varlen_attention(q, k, v, mask)
        elif isinstance(mask, SegmentLayout):
            out = segment_attention(q, k, v, mask, gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.wo(out.transpose(1, 2).reshape(bsz, seq_len, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); w1 = gate, w3 = up, w2 = down."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def build_moe(args: ModelArgs) -> MoE:
    """The Mixtral FFN (docs/moe.md).

    Each layer returns its own share of the loss, w * L_l / num_layers, so the sum over layers
    in `forward_hidden` is the spec's w * mean_l L_l (docs/moe.md, "Load-balancing loss"); every block is MoE.
    """
    return MoE(
        MoEArgs(
            dim=args.dim,
            ffn_dim=args.moe_ffn_dim,
            num_experts=args.num_experts,
            top_k=args.top_k,
            aux_loss_coef=args.aux_loss_coef,
            kernel=args.moe_kernel,
            ep_size=args.ep_size,
            num_layers=args.n_layers,
        )
    )


class TransformerBlock(nn.Module):
    """Pre-norm block: h = x + attn(norm(x)); out = h + ffn(norm(h)). Returns (out, aux)."""

    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.layer_id = layer_id
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        if args.is_moe:
            self.moe = build_moe(args)
        else:
            self.feed_forward = FeedForward(args.dim, args.ffn_dim)
        # Set by apply_activation_checkpointing; a flag rather than a wrapper module keeps the
        # parameter names (and so every state dict and optimizer group) unchanged.
        self.activation_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        mask: PackedMask | None = None,
        cache: LayerCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, cos, sin, token_mask, mask, cache, use_reentrant=False)
        return self._forward(x, cos, sin, token_mask, mask, cache)

    def _forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        token_mask: torch.Tensor | None,
        mask: PackedMask | None,
        cache: LayerCache | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, cache)
        if hasattr(self, "moe"):
            ffn_out, aux = self.moe(self.ffn_norm(h), token_mask)
        else:
            ffn_out, aux = self.feed_forward(self.ffn_norm(h)), h.new_zeros((), dtype=torch.float32)
        return h + ffn_out, aux


class Transformer(nn.Module):
    """Token embeddings, n_layers blocks, final RMSNorm, LM head."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        args.validate()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(i, args) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        if not self.output.weight.is_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Random init for training from scratch (debug flavors): N(0, std) as HF Llama, norms 1.

        Submodules with their own `init_weights` (the MoE layer) initialise themselves.
        """
        for module in self.modules():
            # getattr rather than hasattr + call: nn.Module types unknown attributes as Tensor | Module.
            init = getattr(module, "init_weights", None) if module is not self else None
            if init is not None:
                init()
            elif isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                module.reset_parameters()

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, S] -> embeddings [B, S, D]."""
        return self.tok_embeddings(tokens)

    def forward_hidden(
        self,
        h: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        segments: Sequence[Sequence[int]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run every block and the final norm on embeddings h [B, S, D].

        Returns (hidden [B, S, D], aux) where aux is the sum of the MoE layers' weighted
        load-balancing terms, a 0-dim fp32 zero for dense models. Add it to the CE loss as is.
        token_mask [B, S] bool (False = right padding) only keeps padding out of the MoE
        load-balancing statistics; attention needs no mask (module docstring).

        Generation: `attention_mask` [B, L] (True = real token, False = left padding) covers the
        `cache.length` cached positions and the S new ones (L = cache.length + S); `cache` gets
        this call's keys and values and advances by S. Either one switches RoPE to per-row
        positions (`kv_cache.position_ids`) and attention to an explicit mask.

        Packed training rows: `segments` lists per row the lengths of the samples laid end to end in
        it (`packing.py`); positions restart at each sample and each sample attends only to itself.
        """
        seq_len = h.shape[1]
        past = cache.length if cache is not None else 0
        if past + seq_len > self.args.max_seq_len:
            raise ValueError(
                f"sequence length {past + seq_len} exceeds max_seq_len {self.args.max_seq_len}; "
                "truncate the batch or raise ModelArgs.max_seq_len"
            )
        mask: PackedMask | None = None
        if segments is not None:
            if attention_mask is not None or cache is not None:
                raise ValueError("segments (packed training rows) take no attention_mask or cache")
            positions, mask = packed_attention_inputs(segments, seq_len, h.device, h.dtype)
            cos, sin = rope_cos_sin_at(positions, self.args.head_dim, self.args.rope_theta, h.dtype)
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [B, 1, S, head_dim]: one table per row
        elif attention_mask is None and cache is None:  # training: positions 0..S-1, plain causal
            cos, sin = rope_cos_sin(seq_len, self.args.head_dim, self.args.rope_theta, h.device, h.dtype)
        else:
            if cache is not None:
                cache.check_room(seq_len)
            if attention_mask is None:
                attention_mask = torch.ones(h.shape[0], past + seq_len, dtype=torch.bool, device=h.device)
            if tuple(attention_mask.shape) != (h.shape[0], past + seq_len):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}, expected "
                    f"{(h.shape[0], past + seq_len)} (batch, cached + new positions)"
                )
            positions = position_ids(attention_mask, seq_len)
            cos, sin = rope_cos_sin_at(positions, self.args.head_dim, self.args.rope_theta, h.dtype)
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [B, 1, S, head_dim]: one table per row
            mask = attention_bias(attention_mask, seq_len)
            if token_mask is None:
                token_mask = attention_mask[:, past:].bool()
        aux = torch.zeros((), device=h.device, dtype=torch.float32)
        for i, layer in enumerate(self.layers):
            layer_cache = cache.layers[i] if cache is not None else None
            h, layer_aux = layer(h, cos, sin, token_mask, mask, layer_cache)
            aux = aux + layer_aux
        if cache is not None:
            cache.advance(seq_len)
        return self.norm(h), aux

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for `batch` rows of up to `max_len` positions, on the model's device."""
        weight = self.tok_embeddings.weight
        return KVCache(
            self.args.n_layers, batch, self.args.n_kv_heads, self.args.head_dim, max_len,
            dtype=dtype or weight.dtype, device=weight.device,
        )  # fmt: skip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, S] -> logits [B, S, vocab] at every position (tests and generation)."""
        hidden, _ = self.forward_hidden(self.embed(tokens))
        return self.output(hidden)


def apply_activation_checkpointing(model: Transformer, every: int = 1) -> Transformer:
    """Recompute blocks in backward (non-reentrant torch.utils.checkpoint), every `every`-th block.

    Applied from outside (torchtitan style) so model code stays single-purpose. Parameter names
    do not change, so checkpoints and optimizer groups are the same with and without it.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    for i, layer in enumerate(model.layers):
        assert isinstance(layer, TransformerBlock)  # nn.ModuleList yields plain nn.Module to the type checker
        layer.activation_checkpointing = i % every == 0
    return model

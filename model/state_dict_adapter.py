"""State-dict adapters: the only code that knows Hugging Face / InternLM2 / Mixtral weight names.

Each adapter maps between a foreign checkpoint and our `Transformer` names
(docs/model.md, "Weight adapters and conversion"). Both directions are generators over a
`Mapping[str, Tensor]` and touch the source one key at a time, so the source may be a mapping of lazily
loaded tensors (safetensors `safe_open`, mmap'ed `.bin`) and a converter holds at most one output shard
plus the tensors of one layer in memory, never two full copies of the model.

    adapter = get_adapter("internlm2", args)
    for name, tensor in adapter.from_hf(lazy_hf_mapping):   # ours, one tensor at a time
        ...
    hf = dict(adapter.to_hf(model.state_dict()))           # export

Families: `llama` (TinyLlama, LLaMA2, debug), `internlm2` (fused `wqkv`), `mixtral` (attention
and norms here; router and expert tensors through `moe_convert.py`,
docs/moe.md, "Weight conversion from Hugging Face Mixtral").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from sphinxx.model.moe_convert import mixtral_experts_from_hf, mixtral_experts_to_hf
from sphinxx.schema.decoder import ModelArgs

Tensor = torch.Tensor

# Non-persistent buffers that checkpoints written by older transformers still contain.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class StateDictAdapter:
    """Base class: top-level tensors and per-layer tensors, mapped in our state-dict order."""

    family = ""
    # ours -> foreign, for the three top-level tensors (output omitted when tied)
    top_names: dict[str, str] = {}
    # ours -> foreign, relative to `layers.{i}.` / `model.layers.{i}.`; plain renames only
    layer_names: dict[str, str] = {}

    def __init__(self, args: ModelArgs):
        self.args = args

    # -- conversions -------------------------------------------------------------------------

    def from_hf(self, hf: Mapping[str, Tensor]) -> Iterator[tuple[str, Tensor]]:
        """Yield (our name, tensor) for every tensor of our model, reading `hf` key by key."""
        yield "tok_embeddings.weight", hf[self.top_names["tok_embeddings.weight"]]
        for i in range(self.args.n_layers):
            yield from self.layer_from_hf(hf, i)
        yield "norm.weight", hf[self.top_names["norm.weight"]]
        if not self.args.tie_embeddings:
            yield "output.weight", hf[self.top_names["output.weight"]]

    def to_hf(self, ours: Mapping[str, Tensor]) -> Iterator[tuple[str, Tensor]]:
        """Yield (foreign name, tensor) for every tensor of the foreign checkpoint."""
        yield self.top_names["tok_embeddings.weight"], ours["tok_embeddings.weight"]
        for i in range(self.args.n_layers):
            yield from self.layer_to_hf(ours, i)
        yield self.top_names["norm.weight"], ours["norm.weight"]
        if not self.args.tie_embeddings:
            yield self.top_names["output.weight"], ours["output.weight"]

    def layer_from_hf(self, hf: Mapping[str, Tensor], i: int) -> Iterator[tuple[str, Tensor]]:
        for ours, theirs in self.layer_names.items():
            yield f"layers.{i}.{ours}", hf[f"model.layers.{i}.{theirs}"]

    def layer_to_hf(self, ours: Mapping[str, Tensor], i: int) -> Iterator[tuple[str, Tensor]]:
        for name, theirs in self.layer_names.items():
            yield f"model.layers.{i}.{theirs}", ours[f"layers.{i}.{name}"]

    @staticmethod
    def is_ignored(hf_key: str) -> bool:
        """Foreign keys that carry no weights (stale buffers); a converter may skip them."""
        return hf_key.endswith(_IGNORED_SUFFIXES)

    # -- config check ------------------------------------------------------------------------

    def expected_hf_config(self) -> dict[str, Any]:
        """Values the foreign config.json must hold for this ModelArgs."""
        a = self.args
        return {
            "hidden_size": a.dim,
            "num_hidden_layers": a.n_layers,
            "num_attention_heads": a.n_heads,
            "num_key_value_heads": a.n_kv_heads,
            "intermediate_size": a.moe_ffn_dim if a.is_moe else a.ffn_dim,
            "vocab_size": a.vocab_size,
            "rope_theta": a.rope_theta,
            "rms_norm_eps": a.norm_eps,
            "tie_word_embeddings": a.tie_embeddings,
        }

    def check_hf_config(self, config: Mapping[str, Any]) -> None:
        """Raise ValueError when a foreign config.json disagrees with our ModelArgs."""
        config = dict(config)
        # transformers 5.x writes rope_theta inside rope_parameters; 4.x and remote code at top level
        rope = config.get("rope_parameters") or {}
        config.setdefault("rope_theta", rope.get("rope_theta"))
        config.setdefault("num_key_value_heads", config.get("num_attention_heads"))
        config.setdefault("tie_word_embeddings", False)
        problems = []
        for key, want in self.expected_hf_config().items():
            got = config.get(key)
            if got is None:
                continue  # absent fields are checked by tensor shapes instead
            same = abs(float(got) - float(want)) <= 1e-12 * max(1.0, abs(float(want)))
            if not same:
                problems.append(f"{key}: checkpoint {got!r} vs flavor {want!r}")
        scaling = config.get("rope_scaling") or {}
        kind = scaling.get("rope_type", scaling.get("type"))
        # Dynamic NTK scaling (InternLM2) only acts beyond max_position_embeddings; anything
        # static would change every position and is not implemented.
        if kind not in (None, "default", "dynamic") and float(scaling.get("factor", 1.0)) != 1.0:
            problems.append(f"rope_scaling {scaling!r} is not supported")
        limit = config.get("max_position_embeddings")
        if kind == "dynamic" and limit is not None and self.args.max_seq_len > limit:
            problems.append(
                f"max_seq_len {self.args.max_seq_len} > max_position_embeddings {limit}, where the "
                "checkpoint's dynamic RoPE scaling (not implemented) would start to act"
            )
        if problems:
            raise ValueError(
                f"{self.family} checkpoint does not match the flavor: "
                + "; ".join(problems)
                + ". Pick the matching flavor or override ModelArgs fields (e.g. vocab_size)."
            )


class LlamaAdapter(StateDictAdapter):
    """transformers `LlamaForCausalLM` names (TinyLlama, LLaMA2; rotate-half RoPE, no permutation)."""

    family = "llama"
    top_names = {
        "tok_embeddings.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    layer_names = {
        "attention_norm.weight": "input_layernorm.weight",
        "attention.wq.weight": "self_attn.q_proj.weight",
        "attention.wk.weight": "self_attn.k_proj.weight",
        "attention.wv.weight": "self_attn.v_proj.weight",
        "attention.wo.weight": "self_attn.o_proj.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
        "feed_forward.w1.weight": "mlp.gate_proj.weight",
        "feed_forward.w2.weight": "mlp.down_proj.weight",
        "feed_forward.w3.weight": "mlp.up_proj.weight",
    }


class InternLM2Adapter(StateDictAdapter):
    """InternLM2 remote-code names; q, k and v are fused in `attention.wqkv`.

    wqkv is [(n_heads + 2 n_kv) * head_dim, dim], laid out per KV group g as
    [n_rep query heads, 1 key head, 1 value head] with n_rep = n_heads / n_kv. Viewed as
    [n_kv, n_rep + 2, head_dim, dim]: q = slots 0..n_rep-1 flattened group-major (query head h
    reads KV head h // n_rep, the usual GQA mapping), k = slot n_rep, v = slot n_rep + 1.
    """

    family = "internlm2"
    top_names = {
        "tok_embeddings.weight": "model.tok_embeddings.weight",
        "norm.weight": "model.norm.weight",
        "output.weight": "output.weight",
    }
    layer_names = {
        "attention_norm.weight": "attention_norm.weight",
        "attention.wo.weight": "attention.wo.weight",
        "ffn_norm.weight": "ffn_norm.weight",
        "feed_forward.w1.weight": "feed_forward.w1.weight",
        "feed_forward.w2.weight": "feed_forward.w2.weight",
        "feed_forward.w3.weight": "feed_forward.w3.weight",
    }

    def _groups(self) -> tuple[int, int, int]:
        a = self.args
        return a.n_kv_heads, a.n_heads // a.n_kv_heads, a.head_dim

    def unpack_wqkv(self, wqkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n_kv, n_rep, head_dim = self._groups()
        dim = wqkv.shape[-1]
        expected = (n_kv * (n_rep + 2) * head_dim, self.args.dim)
        if tuple(wqkv.shape) != expected:
            raise ValueError(f"wqkv has shape {tuple(wqkv.shape)}, expected {expected} for this flavor")
        grouped = wqkv.view(n_kv, n_rep + 2, head_dim, dim)
        # clone: three independent tensors (safetensors refuses to save shared storage)
        wq = grouped[:, :n_rep].reshape(n_kv * n_rep * head_dim, dim).clone()
        wk = grouped[:, n_rep].reshape(n_kv * head_dim, dim).clone()
        wv = grouped[:, n_rep + 1].reshape(n_kv * head_dim, dim).clone()
        return wq, wk, wv

    def pack_wqkv(self, wq: Tensor, wk: Tensor, wv: Tensor) -> Tensor:
        n_kv, n_rep, head_dim = self._groups()
        dim = wq.shape[-1]
        grouped = torch.cat(
            [
                wq.reshape(n_kv, n_rep, head_dim, dim),
                wk.reshape(n_kv, 1, head_dim, dim),
                wv.reshape(n_kv, 1, head_dim, dim),
            ],
            dim=1,
        )  # [n_kv, n_rep + 2, head_dim, dim]
        return grouped.reshape(-1, dim)

    def layer_from_hf(self, hf: Mapping[str, Tensor], i: int) -> Iterator[tuple[str, Tensor]]:
        prefix = f"model.layers.{i}."
        yield f"layers.{i}.attention_norm.weight", hf[prefix + "attention_norm.weight"]
        wq, wk, wv = self.unpack_wqkv(hf[prefix + "attention.wqkv.weight"])
        yield f"layers.{i}.attention.wq.weight", wq
        yield f"layers.{i}.attention.wk.weight", wk
        yield f"layers.{i}.attention.wv.weight", wv
        for ours, theirs in self.layer_names.items():
            if ours != "attention_norm.weight":
                yield f"layers.{i}.{ours}", hf[prefix + theirs]

    def layer_to_hf(self, ours: Mapping[str, Tensor], i: int) -> Iterator[tuple[str, Tensor]]:
        p = f"layers.{i}."
        wqkv = self.pack_wqkv(
            ours[p + "attention.wq.weight"], ours[p + "attention.wk.weight"], ours[p + "attention.wv.weight"]
        )
        yield f"model.layers.{i}.attention.wqkv.weight", wqkv
        yield from super().layer_to_hf(ours, i)


class MixtralAdapter(LlamaAdapter):
    """Mixtral: Llama attention and norms; router and experts via `moe_convert`
    (docs/moe.md, "Weight conversion from Hugging Face Mixtral").

    from_hf reads both the Hub per-expert layout (transformers 4.x, safetensors files) and the
    fused transformers 5.x in-memory layout; to_hf writes `layout` ("4.x" = Hub files).
    With ep_size > 1 only this rank's experts are read.
    """

    family = "mixtral"
    layer_names = {k: v for k, v in LlamaAdapter.layer_names.items() if not k.startswith("feed_forward.")}

    def __init__(self, args: ModelArgs, ep_rank: int = 0, layout: str = "4.x"):
        super().__init__(args)
        if not args.is_moe:
            raise ValueError("the mixtral adapter needs an MoE flavor (num_experts > 0)")
        if not 0 <= ep_rank < args.ep_size:
            raise ValueError(f"ep_rank {ep_rank} is outside [0, ep_size={args.ep_size})")
        self.ep_rank = ep_rank
        self.layout = layout

    def expected_hf_config(self) -> dict[str, Any]:
        expected = super().expected_hf_config()
        expected.update(num_local_experts=self.args.num_experts, num_experts_per_tok=self.args.top_k)
        return expected

    def layer_from_hf(self, hf: Mapping[str, Tensor], i: int) -> Iterator[tuple[str, Tensor]]:
        yield from super().layer_from_hf(hf, i)
        moe = mixtral_experts_from_hf(
            hf, f"model.layers.{i}.", self.args.num_experts, ep_rank=self.ep_rank, ep_size=self.args.ep_size
        )
        for name, tensor in moe.items():
            yield f"layers.{i}.moe.{name}", tensor

    def layer_to_hf(self, ours: Mapping[str, Tensor], i: int) -> Iterator[tuple[str, Tensor]]:
        if self.args.ep_size != 1:
            raise ValueError("export needs every expert: gather the EP shards (ep_size 1) before to_hf")
        yield from super().layer_to_hf(ours, i)
        prefix = f"layers.{i}.moe."
        moe_state = {k[len(prefix) :]: ours[k] for k in ours if k.startswith(prefix)}
        yield from mixtral_experts_to_hf(moe_state, f"model.layers.{i}.", layout=self.layout).items()


ADAPTERS: dict[str, type[StateDictAdapter]] = {
    "llama": LlamaAdapter,
    "internlm2": InternLM2Adapter,
    "mixtral": MixtralAdapter,
}


def get_adapter(family: str, args: ModelArgs, **kwargs: Any) -> StateDictAdapter:
    """The adapter for `family` (see a flavor's hf_family); kwargs go to its constructor."""
    if family not in ADAPTERS:
        raise ValueError(f"unknown checkpoint family {family!r}; choose one of {sorted(ADAPTERS)}")
    return ADAPTERS[family](args, **kwargs)


def from_hf_state_dict(adapter: StateDictAdapter, hf: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Eager convenience: the whole converted state dict (small models and tests)."""
    return dict(adapter.from_hf(hf))


def to_hf_state_dict(adapter: StateDictAdapter, ours: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Eager convenience: the whole foreign state dict (small models and tests)."""
    return dict(adapter.to_hf(ours))

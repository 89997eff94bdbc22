"""Decoder hyper-parameters: one dataclass for every LLM backbone (dense and MoE).

Why one class: after conversion TinyLlama, LLaMA2 and InternLM2 are the same LLaMA-architecture
decoder and Mixtral only swaps the FFN for the MoE layer (docs/model.md, "The LLM"), so a single
`ModelArgs` describes all four bases plus the CPU debug flavors. Named flavors live in
`flavors.py`.

Why here, in the schema, and not in `sphinxx.model`: these rules decide whether a run can start
at all (`model.overrides`, `parallel.ep_size` against the experts), and admission must refuse at
`kubectl apply` time what the job would refuse at start, with the same code, in the torch-free
operator. So the model package builds its decoder from this class (docs/architecture.md,
"Layers").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelArgs:
    """Decoder shape. Defaults are the `debug` flavor so `ModelArgs()` builds in milliseconds."""

    dim: int = 256  # model width d (hidden size)
    n_layers: int = 4  # number of decoder blocks
    n_heads: int = 4  # query heads; head_dim = dim // n_heads
    n_kv_heads: int = 2  # key/value heads (GQA); equal to n_heads for MHA
    ffn_dim: int = 512  # SwiGLU hidden size of the dense FFN (unused when num_experts > 0)
    vocab_size: int = 4096  # embedding rows and LM-head outputs
    rope_theta: float = 10000.0  # RoPE base (1e6 for InternLM2 and Mixtral)
    norm_eps: float = 1e-5  # RMSNorm epsilon (1e-5 for all four bases)
    max_seq_len: int = 4096  # longest sequence accepted by forward, image tokens included
    tie_embeddings: bool = False  # share tok_embeddings and output weights (False for all four bases)
    activation_checkpointing: bool = False  # recompute each block in backward (7B and larger)
    num_experts: int = 0  # experts per MoE layer; 0 = dense FFN in every block
    top_k: int = 2  # experts per token (MoE only)
    moe_ffn_dim: int = 0  # SwiGLU hidden size of one expert (MoE only)
    aux_loss_coef: float = 0.01  # weight w of the load-balancing loss (docs/moe.md, "Load-balancing loss")
    moe_kernel: str = "auto"  # expert kernel: auto | loop | grouped (= grouped_mm) | megablocks
    ep_size: int = 1  # expert-parallel degree the MoE layers are built for (1 = all experts local)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def validate(self) -> None:
        """Cross-field checks; raise ValueError with what to change."""
        positive = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelArgs.{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads} (GQA groups)"
            )
        if self.num_experts < 0:
            raise ValueError(f"num_experts must be >= 0 (0 = dense), got {self.num_experts}")
        if self.is_moe:
            if not 1 <= self.top_k <= self.num_experts:
                raise ValueError(f"top_k {self.top_k} must be in [1, num_experts={self.num_experts}]")
            if self.moe_ffn_dim <= 0:
                raise ValueError("moe_ffn_dim must be positive when num_experts > 0")
            if self.ep_size < 1 or self.num_experts % self.ep_size:
                raise ValueError(
                    f"num_experts {self.num_experts} must be divisible by ep_size {self.ep_size}"
                )
        elif self.ffn_dim <= 0:
            raise ValueError("ffn_dim must be positive for a dense model (num_experts = 0)")

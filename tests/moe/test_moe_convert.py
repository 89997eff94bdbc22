"""HF Mixtral <-> ours: round trips (4.x per-expert, 5.x fused), EP slices, lazy reads."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
import torch

from sphinxx.model.moe_convert import mixtral_experts_from_hf, mixtral_experts_to_hf
from tests.moe._helpers import PREFIX, E, F, H, hf_block, hf_state


class RecordingMapping(Mapping):
    """A lazy mapping (like a safetensors file) that records which tensors were read."""

    def __init__(self, data: dict[str, torch.Tensor]):
        self.data, self.read = data, set()

    def __getitem__(self, key: str) -> torch.Tensor:
        self.read.add(key)
        return self.data[key]

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the converter must not list every key")

    def __len__(self) -> int:
        return len(self.data)


def _equal_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_round_trips_are_bit_identical() -> None:
    hf5 = hf_state(hf_block(seed=0))
    ours = mixtral_experts_from_hf(hf5, PREFIX, E)
    hf4 = mixtral_experts_to_hf(ours, PREFIX, layout="4.x")
    assert f"{PREFIX}block_sparse_moe.experts.7.w3.weight" in hf4
    assert hf4[f"{PREFIX}block_sparse_moe.experts.3.w2.weight"].shape == (H, F)
    _equal_dicts(mixtral_experts_from_hf(hf4, PREFIX, E), ours)  # 4.x -> ours
    _equal_dicts(mixtral_experts_to_hf(ours, PREFIX, layout="5.x"), hf5)  # ours -> 5.x


def test_layout_matches_transformers_semantics() -> None:
    """w1 = gate rows, v1 = up rows, w2 = down transposed, for one expert picked out by hand."""
    hf5 = hf_state(hf_block(seed=1))
    ours = mixtral_experts_from_hf(hf5, PREFIX, E)
    e = 5
    gate_up = hf5[f"{PREFIX}mlp.experts.gate_up_proj"][e]
    down = hf5[f"{PREFIX}mlp.experts.down_proj"][e]
    rows = slice(e * F, (e + 1) * F)
    assert torch.equal(ours["experts.mlp.w1"][rows], gate_up[:F])
    assert torch.equal(ours["experts.mlp.v1"][rows], gate_up[F:])
    assert torch.equal(ours["experts.mlp.w2"][rows], down.t())


@pytest.mark.parametrize("ep_size", [2, 4])
def test_ep_slices_read_only_the_ranks_experts(ep_size: int) -> None:
    hf5 = hf_state(hf_block(seed=2))
    full = mixtral_experts_from_hf(hf5, PREFIX, E)
    hf4 = mixtral_experts_to_hf(full, PREFIX, layout="4.x")
    per = E // ep_size
    for rank in range(ep_size):
        lazy = RecordingMapping(hf4)
        part = mixtral_experts_from_hf(lazy, PREFIX, E, ep_rank=rank, ep_size=ep_size)
        rows = slice(rank * per * F, (rank + 1) * per * F)
        for name in ("w1", "v1", "w2"):
            assert torch.equal(part[f"experts.mlp.{name}"], full[f"experts.mlp.{name}"][rows])
        assert torch.equal(part["router.layer.weight"], full["router.layer.weight"])
        read_experts = {int(k.split(".experts.")[1].split(".")[0]) for k in lazy.read if ".experts." in k}
        assert read_experts == set(range(rank * per, (rank + 1) * per))
        # Export of a slice keeps global expert ids.
        back = mixtral_experts_to_hf(part, PREFIX, first_expert=rank * per, num_local_experts=per)
        for k, v in back.items():
            assert torch.equal(v, hf4[k])


def test_errors_are_actionable() -> None:
    with pytest.raises(KeyError, match="block_sparse_moe.gate.weight"):
        mixtral_experts_from_hf({}, PREFIX, E)
    with pytest.raises(ValueError, match="divisible"):
        mixtral_experts_from_hf(hf_state(hf_block()), PREFIX, E, ep_rank=0, ep_size=3)
    ours = mixtral_experts_from_hf(hf_state(hf_block()), PREFIX, E, ep_rank=1, ep_size=2)
    with pytest.raises(ValueError, match="5.x layout"):
        mixtral_experts_to_hf(ours, PREFIX, layout="5.x", first_expert=4, num_local_experts=4)

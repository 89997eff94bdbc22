"""The loop's optional phase timer: phases and the towers' forward timed, nothing timed by default."""

from __future__ import annotations

import time

import torch

from sphinxx.jobs.timing import NULL_TIMER, PHASES, PhaseTimer


class _Towers(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.02)
        return x


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vision = _Towers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.01)
        return self.vision(x)


def test_phases_and_the_towers_inside_the_forward_are_timed_per_step() -> None:
    seen, started = [], []
    timer = PhaseTimer("cpu", lambda *row: seen.append(row), lambda model, flops: started.append(flops))
    model = _Model()
    timer.start(model, "flop model")
    for step in (1, 2):
        with timer.phase("data"):
            time.sleep(0.01)
        with timer.phase("forward"):
            model(torch.zeros(1))
        with timer.phase("backward"):
            time.sleep(0.03)
        with timer.phase("optimizer"):
            pass
        time.sleep(0.01)  # bookkeeping no phase covers
        timer.step_done(step, f"stats {step}", {"loss": 1.0})
    assert started == ["flop model"]
    assert [row[0] for row in seen] == [1, 2] and seen[1][3:] == ("stats 2", {"loss": 1.0})
    for _, wall, phases, _, _ in seen:
        assert set(phases) == set(PHASES)
        assert phases["vision"] >= 0.02 and phases["forward"] >= phases["vision"] + 0.01
        assert phases["backward"] >= 0.03 and phases["data"] >= 0.01
        covered = phases["data"] + phases["forward"] + phases["backward"] + phases["optimizer"]
        assert covered + 0.01 <= wall < covered + 0.5  # each step's wall time is its own


def test_the_jobs_timer_does_nothing() -> None:
    with NULL_TIMER.phase("forward"):
        pass
    NULL_TIMER.start(_Model(), None)
    NULL_TIMER.step_done(1, None, {})

"""Shared hyperparameters: windows, reparametrisations, search ranges."""

import pytest
import torch

from moopt.hypergrad import Schedule, window_index


@pytest.mark.parametrize("steps,windows", [(10, 3), (7, 7), (100, 1), (1500, 10), (11, 4)])
def test_windows_are_contiguous_cover_every_step_and_differ_by_at_most_one(steps, windows):
    schedule = Schedule(0.0, steps=steps, windows=windows)
    index = schedule.window_of
    assert index.shape == (steps,)
    assert int(index[0]) == 0 and int(index[-1]) == windows - 1
    assert bool((index[1:] - index[:-1] >= 0).all()) and bool((index[1:] - index[:-1] <= 1).all())
    sizes = schedule.window_sizes()
    assert sum(sizes) == steps and len(sizes) == windows
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


def test_uneven_split_example_from_the_docs():
    assert Schedule(0.0, steps=10, windows=3).window_sizes() == [4, 3, 3]
    assert window_index(10, 3).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_more_windows_than_steps_is_an_error():
    with pytest.raises(ValueError, match="windows=5 exceeds steps=4"):
        Schedule(0.0, steps=4, windows=5)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        Schedule(0.0, steps=0)
    with pytest.raises(TypeError, match="windows must be an int"):
        Schedule(0.0, steps=4, windows=2.0)


def test_per_step_values_and_vector_valued_init():
    schedule = Schedule(torch.tensor([1.0, 2.0, 3.0]), steps=7, windows=3)
    assert schedule.per_step().tolist() == [1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    weights = Schedule(torch.tensor([0.2, 0.8]), steps=5, windows=2, shape=(2,))
    assert weights.raw.shape == (2, 2) and weights.numel == 4
    assert weights.per_step().shape == (5, 2)
    with pytest.raises(ValueError, match=r"init has shape \(3,\)"):
        Schedule(torch.zeros(3), steps=5, windows=2, shape=(2,))


@pytest.mark.parametrize(
    "transform,value", [("identity", -0.3), ("log", 0.01), ("softplus", 0.5), ("sigmoid", 0.9)]
)
def test_reparametrisations_round_trip_and_derivatives(transform, value):
    schedule = Schedule(value, steps=4, transform=transform, dtype=torch.float64)
    assert abs(float(schedule.values()[0]) - value) < 1e-12
    raw = schedule.raw.clone()
    eps = 1e-6
    numeric = (schedule.values_from_raw(raw + eps) - schedule.values_from_raw(raw - eps)) / (
        2 * eps
    )
    torch.testing.assert_close(schedule.value_derivative(), numeric, rtol=1e-7, atol=0)


def test_bounds_clamp_values_after_updates():
    schedule = Schedule(0.5, steps=4, bounds=(0.0, 1.0))
    schedule.raw = torch.tensor([1.7])
    schedule.project_()
    assert float(schedule.values()[0]) == 1.0
    schedule.set_values(-3.0)
    assert float(schedule.values()[0]) == 0.0
    log_schedule = Schedule(0.1, steps=4, transform="log", bounds=(1e-3, 1.0))
    log_schedule.raw = torch.tensor([5.0])
    log_schedule.project_()
    assert abs(float(log_schedule.values()[0]) - 1.0) < 1e-6
    unbounded_log = Schedule(0.1, steps=4, transform="log")
    unbounded_log.set_values(0.0)  # kept strictly inside the domain: raw stays finite
    assert bool(torch.isfinite(unbounded_log.raw).all()) and float(unbounded_log.values()[0]) > 0
    with pytest.raises(ValueError, match="outside the search range"):
        Schedule(1.5, steps=4, bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match="low < high"):
        Schedule(0.5, steps=4, bounds=(1.0, 0.0))
    with pytest.raises(TypeError, match="pair"):
        Schedule(0.5, steps=4, bounds=1.0)


def test_state_dict_round_trip_and_mismatch():
    schedule = Schedule(torch.tensor([0.1, 0.2]), steps=6, windows=2)
    other = Schedule(0.0, steps=6, windows=2)
    other.load_state_dict(schedule.state_dict())
    assert torch.equal(other.raw, schedule.raw)
    with pytest.raises(ValueError, match="state_dict describes a schedule"):
        Schedule(0.0, steps=6, windows=3).load_state_dict(schedule.state_dict())


def test_bad_init():
    with pytest.raises(ValueError, match="finite"):
        Schedule(float("nan"), steps=3)
    with pytest.raises(TypeError, match="bool"):
        Schedule(True, steps=3)
    with pytest.raises(ValueError, match=r"in the open interval \(0, 1\)"):
        Schedule(1.0, steps=3, transform="sigmoid")

"""The per-task gradient engine and GradientCombiner/GramianWeighting.backward."""

from __future__ import annotations

import pytest
import torch
from engine_aggregators import (
    MeanOfGradients,
    MultiTaskNet,
    NanGradient,
    NormalisedSum,
    ProjectConflicting,
    reference_jacobian,
    task_losses,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from moopt._jacobian import BatchedBackwardMemo, memo_of, task_gradients, task_jacobian

STRATEGIES = ["batched", "loop"]


def pinned(combiner, strategy):
    """The combiner with its per-task gradient path pinned to ``strategy``."""
    memo_of(combiner).strategy = strategy
    return combiner


class DoubleThroughNumpy(torch.autograd.Function):
    """``2x`` whose backward leaves torch (numpy), which vmap cannot batch."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return torch.from_numpy(2 * grad.detach().numpy())


def make_problem(seed: int = 0, n_tasks: int = 3, through_numpy: bool = False):
    torch.manual_seed(seed)
    net = MultiTaskNet(n_tasks=n_tasks).double()
    x = torch.randn(11, 5, dtype=torch.float64)
    y = torch.randn(11, n_tasks, dtype=torch.float64)

    def losses():
        outputs, h = net(x)
        if through_numpy:  # on every path from the losses to the parameters
            outputs = DoubleThroughNumpy.apply(outputs)
        return task_losses(outputs, y), h

    return net, losses


def grads_of(module):
    return torch.cat([p.grad.reshape(-1) for p in module.parameters()])


def zero_grads(module):
    for p in module.parameters():
        p.grad = None


@pytest.mark.parametrize("through_numpy", [False, True])
def test_task_jacobian_matches_separate_backward_passes(through_numpy):
    net, losses = make_problem(through_numpy=through_numpy)
    params = list(net.parameters())
    vector, _ = losses()
    expected = reference_jacobian(vector, params)
    memo = BatchedBackwardMemo("batched")
    jacobian = task_jacobian(vector, params, retain_graph=True, memo=memo)
    assert memo.batched_ok is (not through_numpy)  # the op vmap rejects forces the loop
    torch.testing.assert_close(jacobian, expected, rtol=1e-12, atol=1e-12)
    memo = BatchedBackwardMemo("loop")
    torch.testing.assert_close(task_jacobian(vector, params, memo=memo), expected)
    assert memo.batched_ok is None


def test_auto_strategy_uses_the_loop_on_cpu():
    _, losses = make_problem()
    memo = BatchedBackwardMemo()
    assert memo.strategy == "auto" and not memo.prefers_batched(losses()[0])
    with pytest.raises(ValueError, match="strategy"):
        BatchedBackwardMemo("vmap")


def test_batched_and_loop_paths_agree_and_unused_inputs_are_none():
    net, losses = make_problem()
    unused = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    inputs = [*net.parameters(), unused]
    vector, _ = losses()
    batched = task_gradients(vector, inputs, True, BatchedBackwardMemo("batched"))
    looped = task_gradients(vector, inputs, memo=BatchedBackwardMemo("loop"))
    assert batched[-1] is None and looped[-1] is None
    for b, l in zip(batched[:-1], looped[:-1]):
        assert b.shape == l.shape
        torch.testing.assert_close(b, l, rtol=1e-12, atol=1e-12)


def test_memo_tells_graphs_that_vmap_rejects_from_those_it_runs():
    combiner = pinned(NormalisedSum(), "batched")
    for through_numpy in [False, True, False, True]:
        net, losses = make_problem(n_tasks=2, through_numpy=through_numpy)
        vector, _ = losses()
        expected = combiner.aggregate(reference_jacobian(vector, list(net.parameters())))
        combiner.backward(vector)
        assert combiner._batched_backward_memo.batched_ok is (not through_numpy)
        torch.testing.assert_close(grads_of(net), expected, rtol=1e-10, atol=1e-12)
    assert len(combiner._batched_backward_memo.outcomes) == 2


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_trusted_batched_backward_frees_the_graph(strategy):
    net, losses = make_problem()
    combiner = pinned(MeanOfGradients(), strategy)
    combiner.backward(losses()[0])  # first call: batched path proven, graph kept
    vector, _ = losses()
    combiner.backward(vector)
    with pytest.raises(RuntimeError, match="second time"):
        combiner.backward(vector)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("through_numpy", [False, True])
def test_linear_aggregator_equals_plain_backward(through_numpy, strategy):
    net, losses = make_problem(through_numpy=through_numpy)
    losses()[0].mean().backward(inputs=list(net.parameters()))
    expected = grads_of(net)
    zero_grads(net)
    pinned(MeanOfGradients(), strategy).backward(losses()[0], params=net.parameters())
    torch.testing.assert_close(grads_of(net), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sequence_of_losses_equals_stacked_losses(strategy):
    net, losses = make_problem(n_tasks=3, seed=2)
    combiner = pinned(NormalisedSum(), strategy)
    combiner.backward(losses()[0])
    stacked = grads_of(net)
    zero_grads(net)
    vector, h = losses()
    combiner.backward([vector[0], vector[1:2], vector[2]])
    torch.testing.assert_close(grads_of(net), stacked, rtol=1e-12, atol=1e-12)
    zero_grads(net)
    vector, h = losses()
    combiner.backward(list(vector), features=h)
    from_list = grads_of(net)
    zero_grads(net)
    vector, h = losses()
    combiner.backward(vector, features=h)
    torch.testing.assert_close(grads_of(net), from_list, rtol=1e-12, atol=1e-12)


def test_params_none_fills_every_leaf_and_accumulates():
    net, losses = make_problem()
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    MeanOfGradients().backward(losses()[0])
    got = grads_of(net)
    zero_grads(net)
    losses()[0].mean().backward()
    torch.testing.assert_close(got, grads_of(net) + 1, rtol=1e-12, atol=1e-12)


def test_params_subset_leaves_others_untouched():
    net, losses = make_problem()
    MeanOfGradients().backward(losses()[0], params=net.heads.parameters())
    assert all(p.grad is None for p in net.trunk.parameters())
    assert all(p.grad is not None for p in net.heads.parameters())


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("combiner_type", [NormalisedSum, ProjectConflicting])
def test_non_linear_aggregators_equal_aggregate_of_reference_jacobian(combiner_type, strategy):
    combiner = pinned(combiner_type(), strategy)
    net, losses = make_problem(n_tasks=2, seed=3)
    params = list(net.parameters())
    vector, _ = losses()
    expected = combiner.aggregate(reference_jacobian(vector, params))
    combiner.backward(vector)
    torch.testing.assert_close(grads_of(net), expected, rtol=1e-10, atol=1e-12)


def test_gramian_route_equals_generic_route():
    net, losses = make_problem(seed=5)
    weighting = NormalisedSum()
    weighting.backward(losses()[0])
    gramian_route = grads_of(net)
    zero_grads(net)
    vector, _ = losses()
    jacobian = reference_jacobian(vector, list(net.parameters()))
    w = weighting.weights(jacobian @ jacobian.T)
    torch.testing.assert_close(gramian_route, w @ jacobian, rtol=1e-10, atol=1e-12)


class RecordsLossValues(MeanOfGradients):
    def aggregate(self, jacobian):
        self.seen = self.loss_values.clone()
        return super().aggregate(jacobian)


def test_loss_values_are_visible_to_the_aggregator_during_backward_only():
    net, losses = make_problem()
    combiner = RecordsLossValues()
    assert combiner.loss_values is None
    vector, h = losses()
    combiner.backward(vector, features=h)
    torch.testing.assert_close(combiner.seen, vector.detach())
    assert combiner.loss_values is None


# features= mode -------------------------------------------------------------------------


def test_features_mode_with_mean_gives_mean_for_trunk_and_own_gradient_for_heads():
    net, losses = make_problem()
    vector, h = losses()
    MeanOfGradients().backward(vector, features=h)
    trunk_got = torch.cat([p.grad.reshape(-1) for p in net.trunk.parameters()])
    heads_got = torch.cat([p.grad.reshape(-1) for p in net.heads.parameters()])
    vector, _ = losses()
    trunk_expected = torch.autograd.grad(
        vector.mean(), list(net.trunk.parameters()), retain_graph=True
    )
    heads_expected = torch.autograd.grad(vector.sum(), list(net.heads.parameters()))
    torch.testing.assert_close(trunk_got, torch.cat([g.reshape(-1) for g in trunk_expected]))
    torch.testing.assert_close(heads_got, torch.cat([g.reshape(-1) for g in heads_expected]))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("combiner_type", [NormalisedSum, ProjectConflicting])
@pytest.mark.parametrize("through_numpy", [False, True])
def test_features_mode_aggregates_flattened_feature_gradients(
    combiner_type, through_numpy, strategy
):
    combiner = pinned(combiner_type(), strategy)
    net, losses = make_problem(n_tasks=2, seed=1, through_numpy=through_numpy)
    trunk, heads = list(net.trunk.parameters()), list(net.heads.parameters())
    vector, h = losses()
    combiner.backward(vector, features=h)
    got = grads_of(net)
    # Reference: the K×(B·F) matrix by separate backward passes, aggregated, then h.backward(d)
    vector, h = losses()
    feature_jacobian = reference_jacobian(vector, [h])
    assert feature_jacobian.shape == (2, h.numel())
    direction = combiner.aggregate(feature_jacobian).reshape(h.shape)
    trunk_grads = torch.autograd.grad(h, trunk, direction, retain_graph=True)
    head_grads = torch.autograd.grad(vector.sum(), heads)
    expected = torch.cat([g.reshape(-1) for g in (*trunk_grads, *head_grads)])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_features_mode_with_several_feature_tensors():
    torch.manual_seed(0)
    a, b = torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)
    head = torch.randn(2, requires_grad=True)
    fa, fb = a.sin(), b.exp()
    vector = torch.stack([(fa.sum() * head[0]) ** 2, fb.sum() * fa[0] * head[1]])
    MeanOfGradients().backward(vector, features=[fa, fb])
    fa, fb = a.sin(), b.exp()
    vector = torch.stack([(fa.sum() * head[0]) ** 2, fb.sum() * fa[0] * head[1]])
    expected = torch.autograd.grad(vector.mean(), [a, b], retain_graph=True)
    torch.testing.assert_close(a.grad, expected[0])
    torch.testing.assert_close(b.grad, expected[1])
    torch.testing.assert_close(head.grad, torch.autograd.grad(vector.sum(), head)[0])


def test_features_mode_respects_params_subset():
    net, losses = make_problem()
    vector, h = losses()
    MeanOfGradients().backward(vector, features=h, params=net.trunk.parameters())
    assert all(p.grad is not None for p in net.trunk.parameters())
    assert all(p.grad is None for p in net.heads.parameters())


def test_features_mode_rejects_skip_connection_around_features():
    torch.manual_seed(0)
    w = torch.randn(3, requires_grad=True)
    x = torch.randn(4, 3)
    h = torch.tanh(x * w)
    vector = torch.stack([h.sum(), (h.sum() + w.sum()) ** 2])
    with pytest.raises(ValueError, match="around features"):
        MeanOfGradients().backward(vector, features=h)


# bad input --------------------------------------------------------------------------------


def test_params_without_grad_is_an_error():
    net, losses = make_problem()
    frozen = torch.zeros(3)
    with pytest.raises(ValueError, match=r"params\[1\].*does not require grad"):
        MeanOfGradients().backward(losses()[0], params=[net.heads[0].weight, frozen])


def test_no_loss_depends_on_params_is_an_error():
    _, losses = make_problem()
    with pytest.raises(ValueError, match="no loss depends on params"):
        MeanOfGradients().backward(losses()[0], params=[torch.zeros(2, requires_grad=True)])


def test_nan_gradient_names_the_task():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    vector = torch.stack([(w**2).sum(), NanGradient.apply(w).sum(), w.sum()])
    with pytest.raises(ValueError, match=r"task\(s\) \[1\]"):
        MeanOfGradients().backward(vector)
    vector = torch.stack([(w**2).sum(), NanGradient.apply(w).prod()])
    with pytest.raises(ValueError, match=r"task\(s\) \[1\]"):
        NormalisedSum().backward(vector)


def test_nan_feature_and_head_gradients_name_the_task():
    h = torch.ones(3, requires_grad=True) * 1.0
    head = torch.ones(3, requires_grad=True)
    vector = torch.stack([h.sum(), (NanGradient.apply(head) * h.detach()).sum() + h.sum()])
    with pytest.raises(ValueError, match=r"task\(s\) \[1\].*heads"):
        MeanOfGradients().backward(vector, features=h)
    vector = torch.stack([NanGradient.apply(h).sum(), h.sum()])
    with pytest.raises(ValueError, match=r"task\(s\) \[0\]"):
        MeanOfGradients().backward(vector, features=h)


def test_all_zero_gradients_pass_through_as_zero_rows():
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    vector = torch.stack([(w**2).sum(), (w * 0).sum()])  # task 1 has a zero gradient
    MeanOfGradients().backward(vector)
    torch.testing.assert_close(w.grad, w.detach())  # (2w + 0) / 2
    w.grad = None
    MeanOfGradients().backward(torch.stack([(w * 0).sum(), (w * 0).sum()]))
    torch.testing.assert_close(w.grad, torch.zeros(2))


class WrongLength(MeanOfGradients):
    def aggregate(self, jacobian):
        return jacobian.mean(0)[:-1]


class WrongWeights(NormalisedSum):
    def weights(self, gramian):
        return torch.ones(gramian.shape[0] + 1)


@pytest.mark.parametrize("combiner", [WrongLength(), WrongWeights()])
def test_aggregator_result_of_wrong_shape_is_an_error(combiner):
    _, losses = make_problem()
    with pytest.raises(ValueError, match="must return a tensor of shape"):
        combiner.backward(losses()[0])


def test_mismatched_loss_shapes_and_bad_features():
    net, losses = make_problem()
    vector, h = losses()
    with pytest.raises(ValueError, match="1-D tensor"):
        MeanOfGradients().backward(vector.reshape(1, -1))
    with pytest.raises(ValueError, match="expects 2"):
        MeanOfGradients(n_tasks=2).backward(vector)
    with pytest.raises(TypeError, match="features"):
        MeanOfGradients().backward(vector, features="h")
    with pytest.raises(ValueError, match=r"features\[0\].*does not require grad"):
        MeanOfGradients().backward(vector, features=h.detach())
    with pytest.raises(ValueError, match="process_group"):
        MeanOfGradients().backward(vector, process_group=object())


@settings(max_examples=15, deadline=None)
@given(
    n_tasks=st.integers(1, 4),
    batch=st.integers(1, 6),
    hidden=st.integers(1, 5),
    strategy=st.sampled_from(STRATEGIES),
    seed=st.integers(0, 2**16),
)
def test_engine_matches_separate_backward_passes_on_random_models(
    n_tasks, batch, hidden, strategy, seed
):
    torch.manual_seed(seed)
    net = MultiTaskNet(n_in=3, hidden=hidden, n_tasks=n_tasks).double()
    x = torch.randn(batch, 3, dtype=torch.float64)
    y = torch.randn(batch, n_tasks, dtype=torch.float64)
    outputs, h = net(x)
    vector = task_losses(outputs, y)
    params = list(net.parameters())
    expected = reference_jacobian(vector, params)
    memo = BatchedBackwardMemo(strategy)
    got = task_jacobian(list(vector), params, retain_graph=True, memo=memo)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    feature_rows = reference_jacobian(vector, [h])
    combiner = pinned(NormalisedSum(), strategy)
    if bool((feature_rows.norm(dim=1) > 0).all()):
        combiner.backward(vector, features=h)
        direction = combiner.weights(feature_rows @ feature_rows.T) @ feature_rows
        trunk = list(net.trunk.parameters())
        outputs, h = net(x)
        expected_trunk = torch.autograd.grad(h, trunk, direction.reshape(h.shape))
        got_trunk = [p.grad for p in trunk]
        for g, e in zip(got_trunk, expected_trunk):
            torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("n_tasks", [2, 8, 13])
def test_gramian_matches_one_product_in_every_regime(n_tasks):
    """Chunked (K = 7..11 on CPU) or not, gramian() is J Jᵀ up to summation order."""
    from moopt._jacobian import gramian

    jacobian = torch.randn(n_tasks, 103, generator=torch.Generator().manual_seed(n_tasks))
    expected = jacobian.double() @ jacobian.double().T
    torch.testing.assert_close(gramian(jacobian, chunk=16).double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_engine_rows_for_odd_inputs(strategy):
    """Scalar, empty, non-contiguous, float64 and unused inputs land in the right columns."""
    generator = torch.Generator().manual_seed(5)
    scalar = torch.tensor(1.5, requires_grad=True)
    empty = torch.zeros(0, 3, requires_grad=True)
    strided = torch.randn(4, 3, generator=generator).t().requires_grad_()
    wide = torch.randn(2, dtype=torch.float64, generator=generator, requires_grad=True)
    unused = torch.randn(3, requires_grad=True)
    inputs = [scalar, empty, strided, wide, unused]
    losses = [
        scalar * strided.sum() + empty.sum(),
        (strided**2).sum() + (wide.float() ** 3).sum(),
        scalar**2 * wide.sum().float(),
    ]
    expected = []
    for loss in losses:
        grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        expected.append(
            torch.cat(
                [
                    torch.zeros(x.numel(), dtype=torch.float64)
                    if g is None
                    else g.reshape(-1).double()
                    for g, x in zip(grads, inputs)
                ]
            )
        )
    memo = BatchedBackwardMemo(strategy)
    jacobian = task_jacobian(losses, inputs, memo=memo)
    assert jacobian.dtype == torch.float64
    torch.testing.assert_close(jacobian, torch.stack(expected), rtol=1e-6, atol=1e-6)

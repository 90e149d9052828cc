"""GramianWeighting.watch: the Gramian and update of linear layers from activations.

Every test runs the same model, data and method twice, through the plain Jacobian route
and with ``watch``, and compares the ``.grad`` of every parameter (float64, rtol 1e-10);
``watch_report`` shows which parameters the activation formula served, so that no test
passes because everything fell back.
"""

from __future__ import annotations

import copy
import gc
import io
import weakref

import pytest
import torch
import torch.nn.functional as F
from engine_aggregators import NanGradient
from torch import nn

import moopt
from moopt import _activations
from moopt._activations import kernel_form_is_cheaper
from moopt._jacobian import memo_of

RTOL = 1e-10


@pytest.fixture(autouse=True)
def kernel_everywhere(monkeypatch):
    """Take every sound layer to the kernel form: on these small models the flop rule
    would keep many layers' Jacobian rows, and the tests check the kernel form. Tests of
    the rule itself put the real one back."""
    monkeypatch.setattr(_activations, "kernel_form_is_cheaper", lambda *_: True)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


METHODS = {
    "MGDA": lambda: moopt.MGDA(),
    "MGDA loss+": lambda: moopt.MGDA(normalization="loss+"),
    "UPGrad": lambda: moopt.UPGrad(),
    "DualProj": lambda: moopt.DualProj(),
    "PCGrad": lambda: moopt.PCGrad(generator=seeded()),
    "IMTLG": lambda: moopt.IMTLG(),
    "CAGrad": lambda: moopt.CAGrad(),
    "NashMTL": lambda: moopt.NashMTL(),
    "AlignedMTL": lambda: moopt.AlignedMTL(),
    "ConFIG": lambda: moopt.ConFIG(),
    "FairGrad": lambda: moopt.FairGrad(),
    "GradVac": lambda: moopt.GradVac(generator=seeded()),
}
SOME = ["MGDA", "UPGrad", "PCGrad"]


class Net(nn.Module):
    """A trunk mixing linear layers with others (LayerNorm, Conv1d: their rows fall back),
    one linear head per task; ``x`` may have any number of leading dimensions."""

    def __init__(self, n_in: int = 6, hidden: int = 16, n_tasks: int = 3, bias=True) -> None:
        super().__init__()
        self.first = nn.Linear(n_in, hidden, bias=bias)
        self.norm = nn.LayerNorm(hidden)
        self.second = nn.Linear(hidden, hidden, bias=bias)
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(n_tasks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = torch.tanh(self.second(self.norm(torch.relu(self.first(x)))))
        return [head(h)[..., 0] for head in self.heads]


def make(model_fn, x_shape, n_tasks=3, seed=0):
    torch.manual_seed(seed)
    model = model_fn().double()
    x = torch.randn(*x_shape, dtype=torch.float64)
    targets = torch.randn(n_tasks, *x_shape[:-1], dtype=torch.float64)
    return model, x, targets


def mse_losses(outputs, targets):
    return [((out - t) ** 2).mean() + 0.1 for out, t in zip(outputs, targets)]


def run(method, model, step, watch, params=None, **kwargs):
    """``.grad`` of every parameter after one backward (``step(model)`` gives the losses),
    on a copy of ``model``; returns the grads, the combiner and its watch handle."""
    model = copy.deepcopy(model)
    combiner = METHODS[method]() if isinstance(method, str) else method()
    handle = combiner.watch(model) if watch else None
    chosen = None if params is None else params(model)
    combiner.backward(step(model), params=chosen, **kwargs)
    return [p.grad for p in model.parameters()], combiner, handle, model


def assert_same_grads(reference, watched):
    assert len(reference) == len(watched)
    for i, (a, b) in enumerate(zip(reference, watched)):
        if a is None or b is None:
            assert a is None and b is None, f"parameter {i}: one route left .grad None"
            continue
        torch.testing.assert_close(b, a, rtol=RTOL, atol=RTOL * float(a.abs().max() + 1e-300))


class RecordedGramian(moopt.GramianWeighting):
    """``w_k = 1/‖g_k‖``, keeping every Gramian it is given (to compare them directly)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        self.seen.append(gramian.clone())
        return gramian.diagonal().rsqrt()


def compare(method, model, step, params=None, **kwargs):
    """Both routes give the same ``.grad`` with ``method`` and the same Gramian (seen by
    :class:`RecordedGramian`, whatever ``method`` does with it)."""
    reference, *_ = run(method, model, step, False, params, **kwargs)
    watched, combiner, handle, copy_ = run(method, model, step, True, params, **kwargs)
    assert_same_grads(reference, watched)
    gramians = [run(RecordedGramian, model, step, w, params, **kwargs)[1].seen for w in (0, 1)]
    torch.testing.assert_close(gramians[1], gramians[0], rtol=RTOL, atol=0.0)
    return combiner, handle, copy_


def covered_names(combiner, model):
    names = {id(p): name for name, p in model.named_parameters()}
    report = combiner.watch_report
    return {names[id(p)] for p in report.covered}, {names[id(p)] for p in report.fallback}


def test_every_gramian_weighting_is_tested():
    public = {
        name
        for name in moopt.__all__
        if isinstance(getattr(moopt, name), type)
        and issubclass(getattr(moopt, name), moopt.GramianWeighting)
        and getattr(moopt, name) is not moopt.GramianWeighting
    }
    assert public <= {name.split()[0] for name in METHODS}


@pytest.mark.parametrize("method", list(METHODS))
def test_watch_equals_jacobian_route_with_3d_inputs_and_fallback_rows(method):
    model, x, targets = make(Net, (4, 5, 6))
    combiner, handle, copy_ = compare(method, model, lambda m: mse_losses(m(x), targets))
    covered, rest = covered_names(combiner, copy_)
    assert rest == {"norm.weight", "norm.bias"}
    assert covered == {n for n, _ in copy_.named_parameters()} - rest
    assert handle.records == ()  # consumed by backward


class WideTrunk(nn.Module):
    """Two 32-wide layers and three one-output heads, batch 8: the flop rule takes the
    trunk to the kernel form and keeps the heads' Jacobian rows."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(32, 1) for _ in range(3))

    def forward(self, x):
        h = self.trunk(x)
        return [head(h)[:, 0] for head in self.heads]


@pytest.mark.parametrize("method", SOME)
def test_flop_rule_mixes_kernel_form_and_jacobian_rows(method, monkeypatch):
    monkeypatch.setattr(_activations, "kernel_form_is_cheaper", kernel_form_is_cheaper)
    model, x, targets = make(WideTrunk, (8, 32))
    combiner, _, copy_ = compare(method, model, lambda m: mse_losses(m(x), targets))
    covered, rest = covered_names(combiner, copy_)
    assert covered == {f"trunk.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    assert rest == {f"heads.{i}.{p}" for i in range(3) for p in ("weight", "bias")}


def test_flop_rule_picks_the_cheaper_form():
    assert kernel_form_is_cheaper(rows=128, outputs=512, inputs=512, tasks=2)  # wide trunk
    assert not kernel_form_is_cheaper(rows=128, outputs=512, inputs=256, tasks=2)
    assert kernel_form_is_cheaper(rows=128, outputs=512, inputs=256, tasks=4)
    assert not kernel_form_is_cheaper(rows=128, outputs=1, inputs=512, tasks=8)  # a head
    assert not kernel_form_is_cheaper(rows=8192, outputs=512, inputs=512, tasks=4)  # tokens
    assert not kernel_form_is_cheaper(rows=128, outputs=512, inputs=512, tasks=1)
    rows, outputs, inputs, tasks = 10, 20, 30, 3
    kernel = rows**2 * inputs + tasks * rows**2 * outputs + tasks**2 * rows * outputs
    jacobian = (tasks * rows + tasks**2 + tasks) * outputs * inputs
    update = rows * outputs * inputs
    assert kernel_form_is_cheaper(rows, outputs, inputs, tasks) == (kernel + update < jacobian)


@pytest.mark.parametrize("method", SOME)
def test_one_task(method):
    model, x, targets = make(lambda: Net(n_tasks=1), (5, 6), n_tasks=1)
    combiner, *_ = compare(method, model, lambda m: mse_losses(m(x), targets))
    assert len(combiner.watch_report.covered) == 6


@pytest.mark.parametrize("method", SOME)
def test_params_subset(method):
    model, x, targets = make(Net, (5, 6))

    def params(m):
        return [m.first.weight, m.norm.weight, m.heads[1].bias]

    combiner, _, copy_ = compare(method, model, lambda m: mse_losses(m(x), targets), params)
    # a bias is taken from activations only together with its weight
    assert covered_names(combiner, copy_) == ({"first.weight"}, {"norm.weight", "heads.1.bias"})
    assert copy_.second.weight.grad is None and copy_.first.bias.grad is None


@pytest.mark.parametrize("method", SOME)
def test_linear_without_bias_and_one_dimensional_input(method):
    model, x, targets = make(lambda: Net(bias=False), (6,))
    combiner, *_ = compare(method, model, lambda m: mse_losses(m(x), targets))
    assert len(combiner.watch_report.covered) == 8  # 2 trunk weights, 3 heads × 2


class Twice(nn.Module):
    """One linear layer applied twice (weights shared over calls), and two linear
    modules holding the same weight tensor (tied, both watched)."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(5, 5)
        self.left = nn.Linear(5, 3)
        self.right = nn.Linear(5, 3)
        self.right.weight = self.left.weight

    def forward(self, x):
        h = torch.tanh(self.shared(torch.tanh(self.shared(x))))
        return [self.left(h).sum(-1), self.right(h * h).sum(-1)]


@pytest.mark.parametrize("method", SOME)
def test_parameters_listed_twice_count_once(method):
    """``params`` naming a tensor twice means the same as naming it once (as
    ``Tensor.backward(inputs=)``), on both routes: the Jacobian route used to count the
    tensor twice in the Gramian and add its update to ``.grad`` twice."""
    model, x, targets = make(Net, (5, 6))

    def step(m):
        return mse_losses(m(x), targets)

    once = run(method, model, step, False, params=lambda m: list(m.parameters()))[0]
    for watch in (False, True):
        twice, *_ = run(
            method, model, step, watch, params=lambda m: [*m.parameters(), m.first.weight]
        )
        assert_same_grads(once, twice)


@pytest.mark.parametrize("method", SOME)
def test_layer_called_twice_and_weight_shared_by_two_linear_modules(method):
    model, x, targets = make(Twice, (7, 5), n_tasks=2)
    combiner, _, copy_ = compare(method, model, lambda m: mse_losses(m(x), targets))
    covered, rest = covered_names(combiner, copy_)
    assert covered == {"shared.weight", "shared.bias", "left.weight"}
    assert rest == {"left.bias", "right.bias"}  # used by other calls than the weight


class TiedEmbedding(nn.Module):
    """Language-model weight tying: the output layer's weight is the embedding table,
    and an autoencoder whose decoder uses the encoder's weight transposed."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.mix = nn.Linear(6, 6)
        self.out = nn.Linear(6, 11)
        self.out.weight = self.embed.weight
        self.encoder = nn.Linear(11, 4)

    def forward(self, tokens):
        logits = self.out(torch.tanh(self.mix(self.embed(tokens))))
        code = torch.tanh(self.encoder(logits))
        return [logits.pow(2).mean(-1), F.linear(code, self.encoder.weight.T).pow(2).mean(-1)]


@pytest.mark.parametrize("method", SOME)
def test_tied_weights_fall_back_and_stay_exact(method):
    torch.manual_seed(0)
    model = TiedEmbedding().double()
    tokens = torch.randint(0, 11, (9,))
    targets = torch.randn(2, 9, dtype=torch.float64)
    combiner, _, copy_ = compare(method, model, lambda m: mse_losses(m(tokens), targets))
    covered, rest = covered_names(combiner, copy_)
    assert covered == {"mix.weight", "mix.bias"}
    assert rest == {"embed.weight", "out.bias", "encoder.weight", "encoder.bias"}


class ConvThenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.conv(x)).transpose(1, 2)  # (B, T, 4), not contiguous
        out = self.fc(h)
        return [out[..., 0].mean(-1), out[..., 1].mean(-1)]


@pytest.mark.parametrize("method", SOME)
def test_conv_rows_fall_back_and_non_contiguous_input(method):
    model, x, targets = make(ConvThenLinear, (3, 2, 8), n_tasks=2)
    targets = targets[:, :, 0]
    combiner, _, copy_ = compare(method, model, lambda m: mse_losses(m(x), targets))
    covered, rest = covered_names(combiner, copy_)
    assert covered == {"fc.weight", "fc.bias"} and rest == {"conv.weight", "conv.bias"}


@pytest.mark.parametrize("method", SOME)
def test_in_place_change_of_an_output_makes_that_layer_fall_back(method):
    class InPlace(Net):
        def forward(self, x):
            h = torch.tanh(self.second(nn.functional.relu(self.first(x), inplace=True)))
            return [head(h)[..., 0] for head in self.heads]

    model, x, targets = make(InPlace, (5, 6))
    combiner, _, copy_ = compare(method, model, lambda m: mse_losses(m(x), targets))
    assert covered_names(combiner, copy_)[1] == {"first.weight", "first.bias"}


def test_records_of_other_graphs_and_no_grad_forwards_are_ignored():
    model, x, targets = make(Net, (5, 6))

    def step(m):
        with torch.no_grad():
            m(x)  # not recorded
        mse_losses(m(x + 1), targets)  # recorded, its graph unused by the losses below
        return mse_losses(m(x), targets)

    combiner, *_ = compare("UPGrad", model, step)
    assert combiner.watch_report.calls == 5


def test_watch_lifecycle():
    model, x, targets = make(Net, (5, 6))
    combiner = moopt.MGDA()
    handle = combiner.watch(model)
    with torch.no_grad():
        model(x)
    assert handle.records == ()
    layer = nn.Linear(6, 2)
    with combiner.watch(layer) as single, torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x.float())  # dtypes differ under autocast: not recorded
        assert single.records == ()
    model(x)
    assert len(handle.records) == 5 and handle.active
    handle.clear()
    assert handle.records == ()
    losses = mse_losses(model(x), targets)
    output = weakref.ref(handle.records[0].output)
    combiner.backward(losses)
    assert handle.records == () and combiner.watch_report is not None
    del losses
    gc.collect()
    assert output() is None  # nothing keeps the step's activations after backward
    handle.remove()
    model(x)
    assert handle.records == () and not handle.active
    combiner.backward(mse_losses(model(x), targets))
    assert combiner.watch_report is None  # nothing recorded: the Jacobian route
    with combiner.watch(model.heads) as scoped:
        model(x)
        assert len(scoped.records) == 3
    assert not scoped.active


def test_overlapping_watches_record_each_call_once():
    model, x, targets = make(Net, (5, 6))
    reference, *_ = run("UPGrad", model, lambda m: mse_losses(m(x), targets), False)
    watched = copy.deepcopy(model)
    combiner = moopt.UPGrad()
    combiner.watch(watched)
    combiner.watch(watched.heads)  # the heads are watched twice
    combiner.backward(mse_losses(watched(x), targets))
    assert combiner.watch_report.calls == 5
    assert_same_grads(reference, [p.grad for p in watched.parameters()])


def test_engine_is_asked_for_output_gradients_not_weight_gradients(monkeypatch):
    """No K×D block for covered layers: the per-task engine returns K × (outputs + rest)."""
    widths = []
    engine = _activations.task_jacobian_matrix

    def spy(rows, inputs, *args):
        jacobian, used = engine(rows, inputs, *args)
        widths.append(jacobian.shape[1])
        return jacobian, used

    monkeypatch.setattr(_activations, "task_jacobian_matrix", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)).double()
    x = torch.randn(4, 64, dtype=torch.float64)
    combiner = moopt.MGDA()
    combiner.watch(model)
    out = model(x)
    combiner.backward([out[:, 0].mean(), out[:, 1].pow(2).mean()])
    assert widths == [4 * 64 + 4 * 2]  # output gradients only, against D = 4290
    assert sum(p.numel() for p in model.parameters()) == 4290


def test_nan_task_gradient_is_named():
    model, x, targets = make(Net, (5, 6))
    combiner = moopt.UPGrad()
    handle = combiner.watch(model)
    h = torch.tanh(model.second(model.norm(torch.relu(model.first(x)))))
    inputs = [h, NanGradient.apply(h), h]
    outputs = [head(z)[..., 0] for z, head in zip(inputs, model.heads)]
    with pytest.raises(ValueError, match=r"task\(s\) \[1\]"):
        combiner.backward(mse_losses(outputs, targets))
    assert combiner.watch_report.covered and handle.records == ()


def test_features_mode_ignores_and_clears_the_records():
    model, x, targets = make(Net, (5, 6))

    def step(m):
        h = torch.tanh(m.second(m.norm(torch.relu(m.first(x)))))
        return [head(h)[..., 0] for head in m.heads], h

    results = []
    for watch in (False, True):
        copy_ = copy.deepcopy(model)
        combiner = moopt.MGDA()
        handle = combiner.watch(copy_) if watch else None
        outputs, h = step(copy_)
        combiner.backward(mse_losses(outputs, targets), features=h)
        results.append([p.grad for p in copy_.parameters()])
    assert_same_grads(*results)
    assert combiner.watch_report is None and handle.records == ()


def test_retain_graph_keeps_the_graph():
    model, x, targets = make(Net, (5, 6))
    combiner = moopt.MGDA()
    combiner.watch(model)
    losses = mse_losses(model(x), targets)
    combiner.backward(losses, retain_graph=True)
    assert combiner.watch_report.covered  # the activation route ran, not only J's rows
    first = [p.grad.clone() for p in model.parameters()]
    sum(losses).backward()  # the graph is still there
    assert all(not torch.equal(a, p.grad) for a, p in zip(first, model.parameters()))


def test_non_gramian_combiners_and_bad_modules_are_rejected():
    with pytest.raises(TypeError, match="GradDrop .*GramianWeighting"):
        moopt.GradDrop().watch(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        moopt.MGDA().watch(torch.zeros(2))
    with pytest.raises(ValueError, match="contains no torch.nn.Linear"):
        moopt.MGDA().watch(nn.Sequential(nn.ReLU()))


def test_copies_of_a_watched_model_or_combiner_are_not_watched():
    model, x, targets = make(Net, (5, 6))
    combiner = moopt.MGDA()
    handle = combiner.watch(model)
    twin = copy.deepcopy(model)
    twin(x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=False)(x)
    assert handle.records == ()
    clone = copy.deepcopy(combiner)
    model(x)
    assert len(handle.records) == 5 and not any(w.records for w in clone._watches)
    clone_handle = clone._watches[0]
    clone_handle.remove()  # the original's hooks stay
    model(x)
    assert len(handle.records) == 10
    alive = weakref.ref(handle)
    del combiner, clone, handle, clone_handle
    gc.collect()
    assert alive() is None  # the hooks do not keep a watch (and its records) alive
    model(x)  # and then record nothing


class Parallel(nn.Module):
    """Three layers fed the same input (as query/key/value projections are), one
    without bias: they share x xᵀ, but only those with a bias add 1 1ᵀ."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(6, 5)
        self.key = nn.Linear(6, 5, bias=False)
        self.value = nn.Linear(6, 5)

    def forward(self, x):
        mixed = self.query(x) * torch.tanh(self.key(x)) + self.value(x)
        return [mixed[..., :2].pow(2).mean(), mixed[..., 2:].sin().mean()]


@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_layers_sharing_an_input_and_both_engine_paths(strategy):

    def method():
        combiner = moopt.MGDA()
        memo_of(combiner).strategy = strategy
        return combiner

    model, x, targets = make(Parallel, (4, 3, 6), n_tasks=2)
    combiner, *_ = compare(method, model, lambda m: m(x))
    assert combiner.watch_report.fallback == () and len(combiner.watch_report.covered) == 5
    assert memo_of(combiner).batched_ok is (True if strategy == "batched" else None)


@pytest.mark.parametrize("method", SOME)
def test_stacked_losses_and_a_trainable_input(method):
    """Losses as one 1-D tensor, and a leaf tensor fed to a linear layer as its input (its
    own rows come from J; the layer's weight still from activations)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    model.register_parameter("code", nn.Parameter(torch.randn(5, 6, dtype=torch.float64)))

    def step(m):
        out = m(m.code)
        return torch.stack([out[:, 0].pow(2).mean(), out[:, 1].sin().sum(), out[:, 2].mean()])

    combiner, _, copy_ = compare(method, model, step)
    covered, rest = covered_names(combiner, copy_)
    assert rest == {"code"} and len(covered) == 4


SQUARE = torch.randn(6, 6, generator=seeded(1), dtype=torch.float64)
CHANGES = {
    "transposed": lambda output: output.t(),
    "doubled": lambda output: output + output,
    "rotated": lambda output: output @ SQUARE,
}


@pytest.mark.parametrize("change", CHANGES)
def test_outputs_changed_by_hooks_that_run_before_the_watch_are_not_recorded(change):
    """A global forward hook, or a layer hook added with ``prepend=True`` after ``watch``,
    runs before the watch's hook and may return an output that is not ``F.linear``'s
    (``output + output`` and ``output @ M`` keep its shape and its node kinds, and the
    activation formula would silently be wrong): while one is installed nothing is
    recorded, and a layer whose prepended hook ran first keeps its Jacobian rows."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))
    model = model.double()
    x = torch.randn(6, 6, dtype=torch.float64)
    first = []

    def change_first(module, args, output):
        return CHANGES[change](output) if module is first[0] else None

    def losses(out):
        return [out[:, 0].pow(2).mean(), out[:, 1:].sin().mean()]

    def step_global(m):
        first[:] = [m[0]]
        return losses(m(x))

    hook = nn.modules.module.register_module_forward_hook(change_first)
    try:
        combiner, handle, _ = compare("MGDA", model, step_global)
    finally:
        hook.remove()
    assert combiner.watch_report is None and handle.records == ()

    def step_prepended(m):
        first[:] = [m[2]]
        m[2].register_forward_hook(change_first, prepend=True)
        return losses(m(x))

    combiner, _, copy_ = compare("MGDA", model, step_prepended)
    covered, rest = covered_names(combiner, copy_)
    assert covered == {"0.weight", "0.bias", "4.weight", "4.bias"}
    assert rest == {"2.weight", "2.bias"}


def test_instance_forward_override_and_a_layer_applied_to_its_own_weight():
    """``layer.forward = ...`` on the instance may feed ``F.linear`` something other than
    the argument the hook sees (here ``x + c``), and ``layer(layer.weight)`` gives the
    weight a gradient through the input too: neither call is recorded."""
    torch.manual_seed(0)
    shift = torch.randn(6, dtype=torch.float64)
    x = torch.randn(6, 6, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2))
    model = model.double()

    def step(m):
        layer = m[2]
        layer.forward = lambda h: F.linear(h + shift, layer.weight, layer.bias)
        out = m(x) + m[4](m[0](m[0].weight)).mean(0)
        return [out[:, 0].pow(2).mean(), out[:, 1].sin().mean()]

    combiner, _, copy_ = compare("UPGrad", model, step)
    covered, rest = covered_names(combiner, copy_)
    assert covered == {"4.weight", "4.bias"}
    assert rest == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_non_reentrant_activation_checkpointing():
    """Non-reentrant checkpointing keeps the forward graph: the layers are covered and
    exact (they run again inside the backward passes; those records are dropped).
    (Reentrant checkpointing does not support ``torch.autograd.grad``, which every
    route here uses.)"""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    x = torch.randn(5, 6, dtype=torch.float64)

    def step(m):
        out = torch.utils.checkpoint.checkpoint(m, x, use_reentrant=False)
        return [out[:, 0].pow(2).mean(), out[:, 1].sin().mean()]

    combiner, handle, _ = compare("UPGrad", model, step)
    assert len(combiner.watch_report.covered) == 4 and handle.records == ()

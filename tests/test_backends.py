"""rollconv.backends: the timed choice of roll_conv2d's algorithm='auto' (cudnn.benchmark-like),
tested on the CPU with the timing forced on."""
import os
import subprocess
import sys
import threading

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import rollconv
import rollconv.functional as RF
from rollconv import backends

from conftest import requires_gpu
from helpers import assert_compiles_like_eager


@pytest.fixture(autouse=True)
def _fresh_cache():
    backends.clear_cache()
    yield
    backends.clear_cache()


@pytest.fixture
def timing(monkeypatch):
    """Timing forced on for every device; records each configuration that gets timed."""
    monkeypatch.setattr(backends, "benchmark", True)
    timed = []
    real = backends._time_algorithms

    def spy(key, names):
        timed.append((key, tuple(names)))
        return real(key, names)

    monkeypatch.setattr(backends, "_time_algorithms", spy)
    return timed


@pytest.fixture
def fixed_times(monkeypatch):
    """The timer answers the given medians instead of measuring: fixed_times(bank=1.0, ...)."""
    def set_times(**seconds):
        monkeypatch.setattr(backends, "median_seconds", lambda runs, device: {k: seconds[k] for k in runs if k in seconds})
    return set_times


@pytest.fixture
def algorithms_run(monkeypatch):
    """The algorithm names that roll_conv2d passes to its forward op, in call order."""
    seen = []
    real = RF.ops

    class Spy:
        def __getattr__(self, name):
            op = getattr(real, name)
            if name != "roll_conv2d_forward":
                return op

            def forward(*args):
                seen.append(args[8])
                return op(*args)
            return forward

    monkeypatch.setattr(RF, "ops", Spy())
    return seen


def _rule(x, w, rolls=None):
    return RF.choose_roll_algorithm(x, w, x.shape[1] if rolls is None else rolls, [1, 1], [1, 1])


def test_timed_choice_is_a_candidate_and_cached(timing, algorithms_run):
    x = torch.randn(2, 6, 9, 9, requires_grad=True)
    w = torch.randn(3, 6, 3, 3, requires_grad=True)
    y1 = RF.roll_conv2d(x, w, padding=1, activation="relu")
    y2 = RF.roll_conv2d(x, w, padding=1, activation="relu")
    assert len(timing) == 1, "the second call with the same configuration must not time"
    key, names = timing[0]
    assert names == ("direct", "bank", "fft")
    cache = backends.cached_algorithms()
    assert list(cache) == [key] and cache[key] in names
    assert algorithms_run == [cache[key]] * 2
    assert (key.input_shape, key.weight_shape, key.device, key.dtype) == ((2, 6, 9, 9), (3, 6, 3, 3), "cpu", torch.float32)
    assert (key.padding, key.rolls, key.relu, key.grad_input, key.grad_weight) == ((1, 1), 6, True, True, True)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    torch.testing.assert_close(y1, RF.roll_conv2d(x, w, padding=1, activation="relu", algorithm=cache[key]), rtol=0, atol=0)
    # Any change of the configuration is a new key: shape, rolls, ReLU, gradients needed.
    RF.roll_conv2d(x[:1], w, padding=1, activation="relu")
    RF.roll_conv2d(x, w, padding=1, activation="relu", rolls=4)
    RF.roll_conv2d(x, w, padding=1)
    with torch.no_grad():
        RF.roll_conv2d(x, w, padding=1, activation="relu")
    assert len(timing) == 5 and len(backends.cached_algorithms()) == 5
    assert timing[2][1] == ("direct", "bank"), "no fft with fewer rolls than channels"
    assert (timing[4][0].grad_input, timing[4][0].grad_weight) == (False, False)


def test_the_fastest_candidate_wins(timing, fixed_times, algorithms_run):
    x, w = torch.randn(2, 5, 8, 8), torch.randn(2, 5, 3, 3)
    fixed_times(direct=3e-3, bank=1e-3, fft=2e-3)
    RF.roll_conv2d(x, w)
    fixed_times(direct=1e-3, bank=3e-3, fft=2e-3)
    RF.roll_conv2d(x, w, rolls=4)
    assert algorithms_run == ["bank", "direct"]


def test_timing_runs_the_passes_autograd_will_run(timing, monkeypatch):
    calls = []
    namespace = torch.ops.rollconv
    for name in ("roll_conv2d_forward", "roll_conv2d_backward_input", "roll_conv2d_backward_weight",
                 "roll_conv2d_backward"):
        op = getattr(namespace, name)
        monkeypatch.setattr(namespace, name, lambda *a, _op=op, _name=name: calls.append(_name) or _op(*a))
    x, w = torch.randn(1, 4, 6, 6), torch.randn(2, 4, 3, 3)
    RF.roll_conv2d(x, w.requires_grad_())  # dK only: x needs no gradient
    assert {"roll_conv2d_forward", "roll_conv2d_backward_weight"} == set(calls)
    calls.clear()
    RF.roll_conv2d(x.requires_grad_(), w)
    assert {"roll_conv2d_forward", "roll_conv2d_backward"} == set(calls)  # both gradients: one op
    # warm-up + at least one round per candidate (3), the call itself once more
    assert calls.count("roll_conv2d_forward") >= 2 * 3 + 1


def test_callers_tensors_and_random_state_are_untouched(timing):
    x = torch.randn(2, 4, 7, 7, requires_grad=True)
    w = torch.randn(3, 4, 3, 3, requires_grad=True)
    state = torch.get_rng_state()
    y = RF.roll_conv2d(x, w, padding=1)
    assert len(timing) == 1
    assert torch.equal(state, torch.get_rng_state()), "timing must not draw from the global generator"
    assert x.grad is None and w.grad is None and x.requires_grad and w.requires_grad
    assert y.grad_fn is not None and x._version == 0 and w._version == 0


def test_matches_the_rule_within_rounding(timing):
    cases = [((2, 3, 9, 8), (4, 3, 3, 3), None), ((2, 16, 8, 8), (2, 16, 3, 3), None), ((2, 6, 8, 8), (3, 6, 2, 2), 4)]
    for xs, ws, rolls in cases:
        x = torch.randn(*xs, dtype=torch.float64, requires_grad=True)
        w = torch.randn(*ws, dtype=torch.float64, requires_grad=True)
        b = torch.randn(ws[0], dtype=torch.float64, requires_grad=True)
        results = []
        for setting in (False, True):
            with backends.flags(benchmark=setting):
                y = RF.roll_conv2d(x, w, b, padding=1, rolls=rolls, activation="relu")
            results.append((y, *torch.autograd.grad(y, (x, w, b), torch.randn_like(y, generator=torch.Generator().manual_seed(1)))))
        for rule_result, timed_result in zip(*results):
            torch.testing.assert_close(timed_result, rule_result, rtol=1e-10, atol=1e-10)
    assert len(timing) == len(cases)


def test_the_switch(timing, algorithms_run):
    x, w = torch.randn(1, 3, 6, 6), torch.randn(2, 3, 3, 3)
    for setting in (None, False):  # the CPU has its measured rule: nothing is timed
        with backends.flags(benchmark=setting):
            RF.roll_conv2d(x, w)
    assert timing == [] and algorithms_run == [_rule(x, w)] * 2
    assert backends.benchmark is True  # flags restores the previous setting
    # Off the CPU (meta stands in for a device without a rule, where nothing can run):
    # None and True use the cache there, False only the rule.
    mx, mw = x.to("meta"), w.to("meta")
    key = backends._key(mx, mw, None, [1, 1], [0, 0], [1, 1], 3, 1, False, mx.dtype)
    backends._cache[key] = "direct"
    assert _rule(mx, mw) == "bank"
    for setting in (None, True, False):
        with backends.flags(benchmark=setting):
            assert RF.roll_conv2d(mx, mw).shape == (1, 6, 4, 4)
    assert algorithms_run[2:] == ["direct", "direct", "bank"] and timing == []


def test_environment_variable():
    assert backends._from_environment(None) is None
    assert backends._from_environment("") is None and backends._from_environment("auto") is None
    assert all(backends._from_environment(v) is True for v in ("1", "true", "ON", "yes"))
    assert all(backends._from_environment(v) is False for v in ("0", "false", "Off", "no"))
    with pytest.warns(UserWarning, match="ROLLCONV_BENCHMARK='maybe'"):
        assert backends._from_environment("maybe") is None
    # Read once, at import.
    code = "import rollconv; print(rollconv.backends.benchmark)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, ROLLCONV_BENCHMARK="1", PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "True"


def test_torch_compile_uses_the_rule_and_keeps_dynamic_shapes(timing):
    model = torch.nn.Sequential(rollconv.nn.RollConv2d(6, 2, 3, padding=1, activation="relu"), rollconv.nn.RollConv2d(12, 2, 3))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, fullgraph=True, backend=backend, dynamic=True)
    for n in (2, 3):
        compiled(torch.randn(n, 6, 9, 9))
    assert timing == [] and len(graphs) == 1, "no timing while tracing, no recompilation per batch size"
    algorithms = [node.args[8] for node in graphs[0].graph.nodes if "roll_conv2d_forward" in str(node.target)]
    assert algorithms == [_rule(torch.empty(1, 6, 1, 1), torch.empty(2, 6, 3, 3)), _rule(torch.empty(1, 12, 1, 1), torch.empty(2, 12, 3, 3))]
    # And the results are eager's (where the timed choice runs), with static shapes too.
    assert_compiles_like_eager(model, torch.randn(2, 6, 9, 9), torch.randn(4, 6, 9, 9))
    assert len(timing) >= 2


def test_torch_export_uses_the_cached_choice(timing, fixed_times):
    model = rollconv.nn.RollConv2d(5, 3, 3, padding=1, activation="relu")
    x = torch.randn(2, 5, 8, 8)

    def export(**kw):
        exported = torch.export.export(model, (x,), **kw)
        return exported, [n.args[8] for n in exported.graph.nodes if "roll_conv2d_forward" in str(n.target)]

    rule = _rule(x, model.weight)
    assert export()[1] == [rule] and timing == [], "nothing cached: the rule, and no timing while exporting"
    other = "bank" if rule != "bank" else "direct"
    fixed_times(**{other: 1e-3, rule: 2e-3})
    model(x)  # eager, timed: the key export's forward has (weight needs grad, input does not)
    exported, algorithms = export()
    assert algorithms == [other] and len(timing) == 1
    torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-5, atol=1e-5)
    n = torch.export.Dim("n")
    assert export(dynamic_shapes={"input": {0: n}})[1] == [rule], "symbolic sizes have no cache entry"


def test_fake_and_meta_tensors_time_nothing(timing, algorithms_run):
    x, w = torch.randn(2, 4, 6, 6), torch.randn(3, 4, 3, 3)
    with FakeTensorMode() as mode:
        fx, fw = mode.from_tensor(x), mode.from_tensor(w)
        assert RF.roll_conv2d(fx, fw, padding=1).shape == (2, 12, 6, 6)
    assert RF.roll_conv2d(x.to("meta"), w.to("meta"), padding=1).shape == (2, 12, 6, 6)
    assert timing == [] and algorithms_run == [_rule(x, w), _rule(x.to("meta"), w.to("meta"))]
    RF.roll_conv2d(x, w, padding=1)  # real tensors: timed, then the fake ones reuse the choice
    chosen = algorithms_run[-1]
    with FakeTensorMode() as mode:
        RF.roll_conv2d(mode.from_tensor(x), mode.from_tensor(w), padding=1)
    assert len(timing) == 1 and algorithms_run[-1] == chosen


def test_functorch_transforms_time_nothing(timing):
    x, w = torch.randn(3, 2, 4, 6, 6), torch.randn(3, 4, 3, 3)
    y = torch.func.vmap(lambda xi: RF.roll_conv2d(xi, w, padding=1))(x)
    assert timing == [] and y.shape == (3, 2, 12, 6, 6)
    torch.testing.assert_close(y[1], RF.roll_conv2d(x[1], w, padding=1, algorithm=_rule(x[1], w)))


def test_one_timing_per_key_across_threads(timing):
    x, w = torch.randn(2, 4, 8, 8), torch.randn(3, 4, 3, 3)
    barrier, errors = threading.Barrier(4), []

    def call():
        try:
            barrier.wait()
            RF.roll_conv2d(x, w, padding=1)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(timing) == 1


def test_failing_candidates_are_dropped(timing, monkeypatch):
    real = backends.median_seconds

    def without_fft(runs, device):
        runs = dict(runs)
        runs["fft"] = lambda: (_ for _ in ()).throw(RuntimeError("out of memory"))
        return real(runs, device)

    monkeypatch.setattr(backends, "median_seconds", without_fft)
    x, w = torch.randn(1, 4, 6, 6), torch.randn(2, 4, 3, 3)
    RF.roll_conv2d(x, w)
    assert list(backends.cached_algorithms().values())[0] in ("direct", "bank")
    # Input every candidate rejects: the rule's choice is kept, and the op's own error comes through.
    small = torch.randn(1, 4, 2, 2)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="kernel"):
            RF.roll_conv2d(small, w)
    cache = backends.cached_algorithms()
    assert len(cache) == 2 and len(timing) == 2 and list(cache.values())[1] == _rule(small, w)


def test_compute_dtype_follows_autocast():
    x = torch.randn(1, 2, 3, 3)
    assert backends.compute_dtype(x) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert backends.compute_dtype(x) == torch.bfloat16
        assert backends.compute_dtype(x.double()) == torch.float64
    key = backends._key(x, torch.randn(2, 2, 3, 3), None, [1, 1], [0, 0], [1, 1], 2, 1, False, torch.bfloat16)
    assert backends.candidates(key) == ["direct", "bank"]


def test_median_seconds_interleaves_and_takes_medians():
    order = []
    runs = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    seconds = backends.median_seconds(runs, torch.device("cpu"), rounds=3, budget_s=10)
    assert set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then alternating order


@requires_gpu
@pytest.mark.cuda
def test_cuda_times_by_default_and_survives_graph_capture(monkeypatch):
    monkeypatch.setattr(backends, "benchmark", None)
    x = torch.randn(4, 16, 12, 12, device="cuda")
    w = torch.randn(4, 16, 3, 3, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as torch.cuda.graph asks
        expected = RF.roll_conv2d(x, w, padding=1)
    torch.cuda.current_stream().wait_stream(stream)
    (key, chosen), = backends.cached_algorithms().items()
    assert key.device == "cuda:0" and chosen in backends.candidates(key)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = RF.roll_conv2d(x, w, padding=1)
    backends.clear_cache()
    with torch.cuda.graph(torch.cuda.CUDAGraph()):  # nothing cached: the rule, no timing
        RF.roll_conv2d(x, w, padding=1)
    graph.replay()
    torch.testing.assert_close(captured, expected, rtol=1e-4, atol=1e-4)


def test_jit_trace_times_nothing(timing):
    model = rollconv.nn.RollConv2d(4, 2, 3, padding=1)
    x = torch.randn(2, 4, 6, 6)
    traced = torch.jit.trace(model, (x,), check_trace=False)
    assert timing == []
    assert [n.kind() for n in traced.graph.nodes() if n.kind().startswith("aten::")].count("aten::empty") == 0
    torch.testing.assert_close(traced(x), model(x))

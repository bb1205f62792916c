"""The main job (examples/train_digits.py, `make demo`) on a tiny setting: the rollconv network
is invariant to rolling the images' colour channels (the same logits and predictions on the
training palette and on both rolled palettes), and the job writes its table and figure."""
import importlib.util
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("train_digits", os.path.join(ROOT, "examples", "train_digits.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keep_threads():
    """The job sets torch's thread count; give the rest of the session its own back."""
    threads = torch.get_num_threads()
    yield threads
    torch.set_num_threads(threads)


def test_tiny_run_is_invariant_and_writes_its_figure(demo, tmp_path, keep_threads):
    result = demo.main([
        "--epochs", "2", "--lr", "0.01", "--samples", "192", "--size", "8", "--device", "cpu", "--threads", "1",
        "--timing-rounds", "1", "--out", str(tmp_path),
    ])
    palettes = [name for name, _ in demo.PALETTES]
    z = result["logits"]["rollconv (equivariant)"]
    for name in palettes[1:]:
        torch.testing.assert_close(z[name], z[palettes[0]], rtol=1e-5, atol=1e-5)
        assert torch.equal(z[name].argmax(1), z[palettes[0]].argmax(1)), name
    rows = {network: (params, acc) for network, params, acc in result["rows"]}
    assert len({rows["rollconv (equivariant)"][1][name] for name in palettes}) == 1
    (plain, _), (ours, _) = rows["plain CNN (torch.nn)"], rows["rollconv (equivariant)"]
    assert abs(plain - ours) < 0.15 * ours, "about the same number of parameters"
    assert len(result["timing"]) == 2 and all(t > 0 for t in result["timing"].values())

    figure = tmp_path / "equivariant_digits.png"
    assert result["figure"] == str(figure)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    text = (tmp_path / "results.md").read_text()
    assert "| rollconv (equivariant) |" in text and "| plain CNN (torch.nn) |" in text


def test_network_is_invariant_to_rolling_the_colour_channels(demo):
    """The demo's rollconv network, untrained, in float64: rolling the input's channels by one
    or two leaves the logits unchanged to float64 rounding. A hidden layer with shift=1, or an
    LRN across roll blocks, changes them by 1e-8 or more and fails this."""
    torch.manual_seed(0)
    net = demo.rollconv_network(size=8).double()
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    z = net(x)
    for k in (1, 2):
        torch.testing.assert_close(net(torch.roll(x, k, dims=1)), z, rtol=1e-12, atol=1e-12)


def test_rolled_palettes_are_rolled_images(demo):
    """The test sets are the training-palette test images with their channels rolled, which
    is what the invariance is about (and why the demo normalizes no channel on its own)."""
    _, _, tests, _ = demo.load(8, 40, seed=3)
    base = tests[demo.PALETTES[0][0]]
    for name, k in demo.PALETTES:
        assert torch.equal(tests[name], torch.roll(base, k, dims=1))
    assert (base[:, 0].amax(dim=(1, 2)) > base[:, 1:].amax(dim=(2, 3)).amax(dim=1)).all(), "reddish digits"


def test_filter_bank_twin_computes_the_same_network(demo):
    """The timing compares the rollconv network with itself written by the filter-bank method."""
    net = demo.rollconv_network(size=8).double()
    x = torch.rand(5, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(demo.with_filter_bank(net)(x), net(x))


def test_lrn_across_roll_blocks_would_break_the_invariance(demo):
    """Why the network normalizes within each roll block: LRN over all channels sees the
    neighbouring block at a block's edge and zero padding at the ends, so rolling the blocks
    changes the result; within blocks it commutes with the roll."""
    x = torch.rand(4, 3 * 6, 5, 5, dtype=torch.float64) + 0.5
    rolled = torch.roll(x, 6, dims=1)  # one roll of 3 blocks of 6 channels
    within = demo.BlockLocalResponseNorm(3, size=5, alpha=1.0)
    torch.testing.assert_close(within(rolled), torch.roll(within(x), 6, dims=1))
    across = torch.nn.LocalResponseNorm(5, alpha=1.0)
    assert not torch.allclose(across(rolled), torch.roll(across(x), 6, dims=1), atol=1e-3)

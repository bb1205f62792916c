"""rollconv.nn.RollConv2d as a torch layer: construction checks with torch.nn.Conv2d's
exception types, padding modes with torch.nn.Conv2d's semantics, the attributes and repr."""
import pickle
import warnings

import pytest
import torch

import rollconv

PADDING_MODES = ["zeros", "reflect", "replicate", "circular"]


def torch_conv_error(kwargs):
    """The exception type torch.nn.Conv2d raises for these arguments, at construction or at
    its first forward (it checks sizes only there), or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zero-element weights
            conv = torch.nn.Conv2d(**kwargs)
        conv(torch.randn(1, max(kwargs["in_channels"], 1), 8, 8))
    except Exception as error:  # noqa: BLE001  the type is what we compare
        return type(error)
    return None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(padding="same", stride=2), "padding='same' is not supported for strided convolutions"),
        (dict(padding="full"), "Invalid padding string 'full'"),
        (dict(padding_mode="wrap"), "padding_mode must be one of"),
        (dict(in_channels=0), "in_channels must be positive"),
        (dict(in_channels=-1), "in_channels must be positive"),
        (dict(out_channels=0), "filters must be positive"),
        (dict(kernel_size=0), "kernel_size must be positive"),
        (dict(kernel_size=(3, -1)), "kernel_size must be positive"),
        (dict(stride=0), "stride must be positive"),
        (dict(dilation=(1, 0)), "dilation must be positive"),
        (dict(padding=-1), "padding must be non-negative"),
        (dict(kernel_size=2.5), "kernel_size must be an int or a pair"),
    ],
)
def test_construction_errors_have_torch_conv2d_types(kwargs, match):
    """Every mistake torch.nn.Conv2d also rejects raises at construction, with its type."""
    torch_kwargs = dict(in_channels=3, out_channels=2, kernel_size=3) | kwargs
    expected = torch_conv_error(torch_kwargs)
    assert expected is not None, f"torch.nn.Conv2d accepts {torch_kwargs}"
    ours = dict(torch_kwargs)
    ours["filters"] = ours.pop("out_channels")
    with pytest.raises(expected, match=match):
        rollconv.nn.RollConv2d(**ours)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(algorithm="fft", rolls=2), ValueError, "algorithm='fft' needs rolls == in_channels // shift \\(3\\)"),
        (dict(rolls=0), ValueError, "rolls must be in \\[1, in_channels // shift = 3\\]"),
        (dict(rolls=2.0), TypeError, "rolls must be an int"),
        (dict(activation="tanh"), ValueError, "activation must be"),
        (dict(algorithm="fast"), ValueError, "algorithm must be one of"),
    ],
)
def test_construction_errors_of_rolling_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        rollconv.nn.RollConv2d(3, 2, 3, **kwargs)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize(
    "kernel_size, padding, dilation, stride",
    [(3, 1, 1, 1), ((2, 3), (1, 2), 1, (2, 1)), ((4, 3), "same", (1, 2), 1), (3, "valid", 1, 1)],
)
def test_padding_modes_match_torch_conv2d(padding_mode, kernel_size, padding, dilation, stride):
    """Forward and gradients against torch.nn.Conv2d with the expanded bank and the same
    padding_mode (to_conv2d): the padding is applied before the op as torch does, 'same'
    with even kernels putting the odd pixel right/bottom."""
    m = rollconv.nn.RollConv2d(
        4, 3, kernel_size, stride=stride, padding=padding, dilation=dilation, rolls=3, padding_mode=padding_mode,
        activation="relu", dtype=torch.float64,
    )
    reference = m.to_conv2d()
    assert reference[0].padding_mode == padding_mode
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64, requires_grad=True)
    y = m(x)
    y_ref = reference(x)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, m.weight), g)
    grads_ref = torch.autograd.grad(y_ref, (x, reference[0].weight), g)
    torch.testing.assert_close(grads[0], grads_ref[0])
    # The bank's gradient folded back onto the base filters: dw[f, c] = sum_r dbank[r*F + f, (c + r) mod C].
    folded = sum(torch.roll(grads_ref[1][r * 3 : (r + 1) * 3], -r, dims=1) for r in range(3))
    torch.testing.assert_close(grads[1], folded)


def test_unbatched_input_with_padding_mode():
    m = rollconv.nn.RollConv2d(3, 2, 3, padding=1, padding_mode="circular", dtype=torch.float64)
    x = torch.randn(3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(m(x), m(x.unsqueeze(0)).squeeze(0))
    torch.testing.assert_close(m(x), m.to_conv2d()(x))


def test_attributes_and_repr():
    m = rollconv.nn.RollConv2d(6, 4, (3, 5), stride=(2, 1), padding=(1, 2), dilation=2, rolls=3, padding_mode="reflect")
    assert (m.in_channels, m.filters, m.rolls, m.out_channels) == (6, 4, 3, 12)
    assert (m.kernel_size, m.stride, m.padding, m.dilation) == ((3, 5), (2, 1), (1, 2), (2, 2))
    assert m.padding_mode == "reflect" and m.activation is None and m.algorithm == "auto"
    assert repr(m) == (
        "RollConv2d(6, 4, kernel_size=(3, 5), stride=(2, 1), rolls=3 (out_channels=12), padding=(1, 2), "
        "dilation=(2, 2), padding_mode='reflect')"
    )
    assert repr(rollconv.nn.RollConv2d(2, 1, 1, bias=False, padding="same", activation="relu", algorithm="fft")) == (
        "RollConv2d(2, 1, kernel_size=(1, 1), stride=(1, 1), rolls=2 (out_channels=2), padding='same', "
        "bias=False, activation='relu', algorithm='fft')"
    )


def test_pickle_round_trip_keeps_padding_mode():
    m = rollconv.nn.RollConv2d(3, 2, 3, padding=1, padding_mode="replicate")
    copy = pickle.loads(pickle.dumps(m))
    x = torch.randn(1, 3, 5, 5)
    assert copy.padding_mode == "replicate"
    torch.testing.assert_close(copy(x), m(x))

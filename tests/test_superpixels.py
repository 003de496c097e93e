"""snnspx.superpixels helpers: relabel_sequential on extreme label values and empty shapes
(both of its algorithms), grid_superpixels on empty and uneven sizes."""

from __future__ import annotations

import math

import pytest
import torch

from snnspx import superpixels as S

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", marks=pytest.mark.cuda, id="cuda")]
LABEL_DTYPES = [pytest.param(torch.int32, id="i32"), pytest.param(torch.int64, id="i64")]
I64_MAX, I64_MIN = 2**63 - 1, -(2**63)
I32_MAX, I32_MIN = 2**31 - 1, -(2**31)


def relabel_loop(labels: torch.Tensor) -> torch.Tensor:
    """Reference: per [H, W] map, the rank of each non-negative value among the map's
    distinct non-negative values; -1 for negatives (plain Python on the values)."""
    flat = labels.reshape(-1, labels.shape[-2] * labels.shape[-1]).tolist()
    out = []
    for row in flat:
        rank = {v: i for i, v in enumerate(sorted({v for v in row if v >= 0}))}
        out.append([rank[v] if v >= 0 else -1 for v in row])
    return torch.tensor(out, dtype=labels.dtype).reshape(labels.shape)


def extreme_labels(gen, shape, dtype):
    """Random labels drawn from a pool of extreme and ordinary values, so that values repeat
    within and across images."""
    info = torch.iinfo(dtype)
    pool = torch.tensor(
        [info.min, info.min + 1, -(2**20), -2, -1, 0, 1, 2, 3, 1000, 2**30, info.max // 2, info.max - 1, info.max]
        + ([2**31, 2**40, 2**62, 2**62 + 1, 3 * 2**61] if dtype == torch.int64 else []),
        dtype=dtype,
    )
    return pool[torch.randint(0, len(pool), shape, generator=gen)]


# --------------------------------------------------------------------------- relabel_sequential
def test_relabel_sequential_large_labels_across_images():
    """The stress test's case: a combined image * span + label key overflowed int64 and turned
    a valid pixel into a negative (ignored) one."""
    lab = torch.tensor([[[2**62, 0]], [[3, 2**62]]])
    assert S.relabel_sequential(lab).tolist() == [[[1, 0]], [[0, 1]]]


def test_relabel_sequential_int64_max_label():
    """A label of 2**63 - 1 made the old span 2**63 (bincount of negative keys raised)."""
    lab = torch.tensor([[[I64_MAX, 0]], [[3, I64_MAX]]])
    assert S.relabel_sequential(lab).tolist() == [[[1, 0]], [[0, 1]]]
    one = torch.tensor([[I64_MAX, 0, I64_MIN, 7, I64_MAX]])
    assert S.relabel_sequential(one).tolist() == [[2, 0, -1, 1, 2]]


def test_relabel_sequential_int32_extremes_keep_int32():
    lab = torch.tensor([[[I32_MAX, I32_MIN, 0]], [[I32_MAX - 1, I32_MAX, -1]]], dtype=torch.int32)
    out = S.relabel_sequential(lab)
    assert out.dtype == torch.int32
    assert out.tolist() == [[[1, -1, 0]], [[0, 1, -1]]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LABEL_DTYPES)
@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 6), (2, 3, 5, 4)], ids=["HW", "BHW", "TBHW"])
def test_relabel_sequential_extreme_values_match_loop(shape, dtype, device, gen):
    lab = extreme_labels(gen, shape, dtype).to(device)
    out = S.relabel_sequential(lab)
    assert out.shape == lab.shape and out.dtype == dtype and out.device == lab.device
    assert torch.equal(out.cpu(), relabel_loop(lab.cpu()))


@pytest.mark.parametrize("dtype", LABEL_DTYPES)
@pytest.mark.parametrize("high", [5, 300, 2**40], ids=["few", "many", "sparse"])
def test_relabel_both_algorithms_match_loop_on_ordinary_labels(high, dtype, gen):
    """The fast (image, label)-key path and the sort path (taken when the key would overflow)
    give the same answer on ordinary labels too."""
    if dtype == torch.int32 and high > 2**31:
        pytest.skip("int32 labels")
    lab = torch.randint(-3, high, (3, 2, 6, 7), generator=gen, dtype=torch.int64).to(dtype)
    want = relabel_loop(lab)
    assert torch.equal(S.relabel_sequential(lab), want)
    flat = lab.reshape(-1, 42)
    span = max(int(flat.max()), 0) + 1
    assert torch.equal(S._relabel_by_key(flat.long(), span).to(dtype), want.reshape(-1, 42))
    assert torch.equal(S._relabel_by_sort(flat), want.reshape(-1, 42))


def test_relabel_sequential_key_limit_boundary():
    """N * span = 2**63 exactly must not take the key path (span 2**63 is no int64)."""
    for lab in (
        torch.tensor([[I64_MAX, 1]]),  # N = 1, span = 2**63
        torch.tensor([[[2**62 - 1, 1]], [[1, 2**62 - 1]]]),  # N = 2, span = 2**62: fits
        torch.tensor([[[2**62, 1]], [[1, 2**62]]]),  # N = 2, span = 2**62 + 1
    ):
        assert torch.equal(S.relabel_sequential(lab), relabel_loop(lab))


def test_relabel_sequential_noncontiguous_input(gen):
    lab = extreme_labels(gen, (4, 6, 5), torch.int64).transpose(1, 2)
    assert not lab.is_contiguous()
    assert torch.equal(S.relabel_sequential(lab), relabel_loop(lab.contiguous()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LABEL_DTYPES)
@pytest.mark.parametrize(
    "shape", [(2, 0, 3), (0, 3, 3), (2, 3, 0), (0, 0), (0, 4), (3, 0), (0, 2, 3, 3), (2, 2, 0, 0)]
)
def test_relabel_sequential_empty_shapes(shape, dtype, device):
    lab = torch.zeros(shape, dtype=dtype, device=device)
    out = S.relabel_sequential(lab)
    assert out.shape == lab.shape and out.dtype == dtype and out.device == lab.device
    assert out.numel() == 0


def test_relabel_sequential_all_ignored_and_one_pixel():
    assert S.relabel_sequential(torch.full((2, 1, 1), I64_MIN)).tolist() == [[[-1]], [[-1]]]
    assert S.relabel_sequential(torch.tensor([[I64_MAX]])).tolist() == [[0]]


# --------------------------------------------------------------------------- grid_superpixels
@pytest.mark.parametrize("dtype", LABEL_DTYPES)
@pytest.mark.parametrize("height, width", [(0, 0), (0, 5), (4, 0)])
def test_grid_superpixels_empty_sizes(height, width, dtype):
    lab = S.grid_superpixels(height, width, 3, dtype=dtype)
    assert lab.shape == (height, width) and lab.dtype == dtype
    assert torch.equal(S.relabel_sequential(lab), lab)


@pytest.mark.parametrize("height, width, cell", [(1, 1, 1), (5, 3, 4), (7, 9, 2), (3, 11, 5), (2, 2, 7), (9, 1, 3)])
def test_grid_superpixels_uneven_sizes(height, width, cell):
    lab = S.grid_superpixels(height, width, cell)
    cols = math.ceil(width / cell)
    want = [[(h // cell) * cols + w // cell for w in range(width)] for h in range(height)]
    assert lab.tolist() == want
    K = math.ceil(height / cell) * math.ceil(width / cell)
    assert int(lab.max()) + 1 == K
    assert torch.equal(torch.unique(lab), torch.arange(K)), "every cell is non-empty and numbered"
    assert torch.equal(S.relabel_sequential(lab), lab), "grid labels are already sequential"


def test_grid_superpixels_huge_cell():
    """A cell larger than the image is one superpixel, also beyond int64 (it overflowed)."""
    for cell in (9, 2**62, 2**70):
        assert torch.equal(S.grid_superpixels(3, 4, cell), torch.zeros(3, 4, dtype=torch.int64))


@pytest.mark.parametrize("device", DEVICES)
def test_grid_superpixels_device(device):
    lab = S.grid_superpixels(5, 6, 2, dtype=torch.int32, device=device)
    assert lab.device.type == device and lab.dtype == torch.int32
    assert torch.equal(lab.cpu(), S.grid_superpixels(5, 6, 2, dtype=torch.int32))


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(height=-1, width=3, cell=2), ValueError, "height and width must be >= 0"),
        (dict(height=3, width=-2, cell=2), ValueError, "height and width must be >= 0"),
        (dict(height=3, width=3, cell=-1), ValueError, "cell must be >= 1"),
        (dict(height=3.0, width=3, cell=1), TypeError, "height must be an int"),
        (dict(height=3, width=True, cell=1), TypeError, "width must be an int"),
        (dict(height=3, width=3, cell=2.5), TypeError, "cell must be an int"),
    ],
)
def test_grid_superpixels_bad_arguments_name_the_argument(kwargs, err, match):
    with pytest.raises(err, match=match):
        S.grid_superpixels(**kwargs)

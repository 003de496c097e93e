"""Label maps for superpixel pooling, without dependencies beyond PyTorch.

Two simple makers for tests, benchmarks and regular grids:

* :func:`grid_superpixels`: square cells, the "superpixels" of a plain grid;
* :func:`relabel_sequential`: compact any labels to ``0..K-1`` per image.

For real superpixels, segment the images with scikit-image's SLIC and hand the
result over as a tensor::

    from skimage.segmentation import slic
    seg = slic(image_hwc, n_segments=256, compactness=10, start_label=0)   # [H, W] int
    labels = torch.from_numpy(seg).long()                                 # one image
    # a batch: torch.stack([...]) -> [B, H, W]; then relabel_sequential(labels)

(scikit-image is not a dependency of snnspx.)
"""

from __future__ import annotations

import torch

from . import _checks

__all__ = ["grid_superpixels", "relabel_sequential"]


def grid_superpixels(
    height: int, width: int, cell: int, *, dtype: torch.dtype = torch.int64, device: torch.device | str | None = None
) -> torch.Tensor:
    """Square ``cell x cell`` superpixels, numbered row by row.

    Pixel ``(h, w)`` gets label ``(h // cell) * ceil(width / cell) + w // cell``; the cells
    of the last row and column are cut short when `cell` does not divide the size.
    ``K = ceil(height / cell) * ceil(width / cell)``.

    Returns:
        ``[height, width]`` labels of `dtype` (int32 or int64), shared by every image.
    """
    for name, v in (("height", height), ("width", width), ("cell", cell)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if height < 0 or width < 0:
        raise ValueError(f"height and width must be >= 0, got {height} and {width}")
    if cell < 1:
        raise ValueError(f"cell must be >= 1, got {cell}")
    if dtype not in _checks.LABEL_DTYPES:
        raise TypeError(f"dtype must be torch.int32 or torch.int64, got {dtype}")
    cell = min(cell, max(height, width, 1))  # a larger cell is the same single cell (and fits int64)
    cols = -(-width // cell)
    rows = torch.arange(height, device=device) // cell
    cells = torch.arange(width, device=device) // cell
    return (rows[:, None] * cols + cells[None, :]).to(dtype)


# The fast path's keys image * span + label are < N * span, and span itself is an int64 operand.
_KEY_LIMIT = 2**63


def relabel_sequential(labels: torch.Tensor) -> torch.Tensor:
    """Renumber each image's labels to ``0..K_i-1``, keeping their order; negatives become -1.

    An image is one ``[H, W]`` map: `labels` may be ``[H, W]``, ``[B, H, W]`` or
    ``[T, B, H, W]`` (every step of every image is relabelled on its own). Label values
    that occur in an image become consecutive, smallest first; ignored pixels (negative
    labels) become -1. Pass ``num_superpixels = int(out.max()) + 1`` (the largest
    ``K_i``) to the pooling ops, or let them infer it. Exact for every int32 / int64
    label value. Synchronises with the GPU (reads the largest label).

    Returns:
        Tensor of the shape, dtype and device of `labels`.
    """
    _checks.check_labels_tensor(labels)
    if labels.numel() == 0:  # also H * W == 0, where the [-1, H * W] view below is ambiguous
        return labels.clone()
    flat = labels.reshape(-1, labels.shape[-2] * labels.shape[-1])
    span = max(int(flat.max()), 0) + 1
    if flat.shape[0] * span < _KEY_LIMIT:
        out = _relabel_by_key(flat.long(), span)
    else:  # an (image, label) key would overflow int64
        out = _relabel_by_sort(flat)
    return out.reshape(labels.shape).to(labels.dtype)


def _relabel_by_key(flat: torch.Tensor, span: int) -> torch.Tensor:
    """The fast path for ``[N, P]`` int64 labels ``< span``, with ``N * span < 2**63``: one
    ``torch.unique`` over a key per (image, label), ``image * span + label``."""
    valid = flat >= 0
    image = torch.arange(flat.shape[0], device=flat.device)[:, None].expand_as(flat)
    # one key per (image, label): unique ranks them in image-major, label order
    key = torch.where(valid, image * span + flat, -1)
    uniq, rank = torch.unique(key, sorted=True, return_inverse=True)
    has_neg = bool(uniq.numel()) and int(uniq[0]) < 0
    real = uniq[1:] if has_neg else uniq
    rank = rank - int(has_neg)
    # rank of each image's first label = distinct labels in the images before it
    per_image = torch.bincount(real // span, minlength=flat.shape[0])
    first = torch.cumsum(per_image, 0) - per_image
    return torch.where(valid, rank - first[:, None], -1)


def _relabel_by_sort(flat: torch.Tensor) -> torch.Tensor:
    """Any ``[N, P]`` int32 / int64 labels: each row sorted on its own, then a pixel's new
    label is the number of distinct non-negative values up to it in its sorted row, minus
    one. Only comparisons of label values, no arithmetic on them: exact for every value."""
    vals, order = torch.sort(flat, dim=1)  # negatives first
    valid = vals >= 0
    first = valid.clone()
    first[:, 1:] &= vals[:, 1:] != vals[:, :-1]  # first pixel of each distinct value
    rank = torch.where(valid, torch.cumsum(first, dim=1) - 1, -1).to(flat.dtype)
    out = torch.empty(flat.shape, dtype=flat.dtype, device=flat.device)
    return out.scatter_(1, order, rank)  # order is a permutation of each row: no collisions

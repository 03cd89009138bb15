"""Resize + centre crop of differently sized images in a few batched matrix products (the GPU path).

torchvision's antialiased bicubic/bilinear resize of a tensor is separable and linear: each output
row is a weighted sum of a few input rows, with the weights of aten's ``_upsample_*_aa`` kernels
(PIL's filters), computed in float and then clamped and rounded back to uint8. So for an image
``X`` (3, H, W) the resize followed by the centre crop is ``round(Wv @ X @ Wh^T)``, where ``Wv``
(crop_h, H) holds the rows of the vertical weights that the crop keeps and ``Wh`` (crop_w, W) the
horizontal ones. Web images come in many sizes, so grouping equal sizes still left one resize call
(about ten kernels and their Python) per image; here the images of a batch are zero-padded to the
largest size of a bucket of similar sizes and each bucket is two ``matmul`` calls, whatever the
sizes. The weights are computed for the whole bucket at once, with aten's formulas.

It matches timm's ``Resize(short side)`` + ``CenterCrop`` transform objects up to float summation
order (so to a rare one-level difference after rounding); any other geometry keeps the per-size
path (:func:`plan` returns None).
"""
from __future__ import annotations

import dataclasses
import warnings

#: Padded elements per bucket at most (float32: 4 bytes each), and how much padding a bucket may add.
BUCKET_ELEMENTS = 96 * 2**20
BUCKET_WASTE = 1.5
_FILTER_SIZE = {"bicubic": 4, "bilinear": 2}


@dataclasses.dataclass(frozen=True)
class ResizeCrop:
    """Resize the short side to ``short`` (torchvision's size rule), then centre-crop ``crop``."""

    short: int
    crop: tuple[int, int]
    mode: str

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.short, int(self.short * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def fits(self, height: int, width: int) -> bool:
        out_h, out_w = self.output_size(height, width)
        return out_h >= self.crop[0] and out_w >= self.crop[1]

    def __call__(self, images: list):
        """uint8 ``(3, H_i, W_i)`` tensors on one device -> uint8 ``(n, 3, crop_h, crop_w)``."""
        import torch

        order = sorted(range(len(images)), key=lambda k: (images[k].shape[-2], images[k].shape[-1]))
        out = torch.empty((len(images), 3, *self.crop), dtype=torch.uint8, device=images[0].device)
        for bucket in _buckets([tuple(images[k].shape[-2:]) for k in order]):
            members = [order[k] for k in bucket]
            result = self._bucket([images[k] for k in members])
            out[torch.as_tensor(members, device=out.device)] = result
        return out

    def _bucket(self, images: list):
        import torch

        device = images[0].device
        heights = [int(x.shape[-2]) for x in images]
        widths = [int(x.shape[-1]) for x in images]
        sizes = [self.output_size(h, w) for h, w in zip(heights, widths)]
        tops = [int(round((oh - self.crop[0]) / 2.0)) for oh, _ in sizes]
        lefts = [int(round((ow - self.crop[1]) / 2.0)) for _, ow in sizes]
        vertical = _weights(heights, [oh for oh, _ in sizes], tops, self.crop[0], max(heights), self.mode, device)
        horizontal = _weights(widths, [ow for _, ow in sizes], lefts, self.crop[1], max(widths), self.mode, device)
        padded = _padded([x.float() for x in images], max(heights), max(widths))
        x = torch.matmul(vertical.unsqueeze(1), padded)               # (n, 3, crop_h, W)
        x = torch.matmul(x, horizontal.transpose(1, 2).unsqueeze(1))  # (n, 3, crop_h, crop_w)
        return x.clamp_(0, 255).round_().to(torch.uint8)


def plan(geometry: list) -> ResizeCrop | None:
    """A :class:`ResizeCrop` doing what timm's ``geometry`` steps do, or None if they are not one
    short-side antialiased bicubic/bilinear ``Resize`` followed by one ``CenterCrop``."""
    from torchvision import transforms as T

    if len(geometry) != 2 or not isinstance(geometry[0], T.Resize) or not isinstance(geometry[1], T.CenterCrop):
        return None
    resize, crop = geometry
    size = resize.size
    size = size[0] if isinstance(size, (list, tuple)) and len(size) == 1 else size
    mode = getattr(resize.interpolation, "value", resize.interpolation)
    if not isinstance(size, int) or resize.max_size is not None or resize.antialias is False:
        return None
    if mode not in _FILTER_SIZE:
        return None
    crop_size = tuple(crop.size) if isinstance(crop.size, (list, tuple)) else (crop.size, crop.size)
    crop_size = crop_size * 2 if len(crop_size) == 1 else crop_size
    return ResizeCrop(size, (int(crop_size[0]), int(crop_size[1])), mode)


def _buckets(shapes: list[tuple[int, int]]) -> list[list[int]]:
    """Consecutive runs of the (sorted) shapes whose zero-padded batch stays small and not wasteful."""
    buckets: list[list[int]] = []
    area = max_h = max_w = 0
    for k, (h, w) in enumerate(shapes):
        if buckets:
            n = len(buckets[-1]) + 1
            padded = n * max(max_h, h) * max(max_w, w)
            if padded * 3 <= BUCKET_ELEMENTS and padded <= BUCKET_WASTE * (area + h * w):
                buckets[-1].append(k)
                area, max_h, max_w = area + h * w, max(max_h, h), max(max_w, w)
                continue
        buckets.append([k])
        area, max_h, max_w = h * w, h, w
    return buckets


def _padded(images: list, height: int, width: int):
    import torch

    try:  # one call (a kernel on CUDA) where nested tensors can pad
        with warnings.catch_warnings():  # "prototype stage": the strided layout is the one that pads 3-d
            warnings.simplefilter("ignore", UserWarning)
            return torch.nested.nested_tensor(images).to_padded_tensor(0.0, (len(images), 3, height, width))
    except (RuntimeError, NotImplementedError):
        out = images[0].new_zeros((len(images), 3, height, width))
        for k, x in enumerate(images):
            out[k, :, :x.shape[-2], :x.shape[-1]] = x
        return out


def _weights(in_sizes: list[int], out_sizes: list[int], starts: list[int], keep: int, in_max: int, mode: str,
             device):
    """``(n, keep, in_max)`` resampling weights of rows ``starts[b] .. starts[b] + keep`` of resizing
    ``in_sizes[b]`` to ``out_sizes[b]``: aten's antialiased filter weights (support scaled when
    downsampling, normalised to sum 1), zero past each image's own size."""
    import torch

    f64 = torch.float64
    size = torch.as_tensor(in_sizes, dtype=f64, device=device)[:, None]
    scale = size / torch.as_tensor(out_sizes, dtype=f64, device=device)[:, None]
    half = _FILTER_SIZE[mode] * 0.5
    support = torch.where(scale >= 1, half * scale, torch.full_like(scale, half))
    invscale = torch.where(scale >= 1, 1 / scale, torch.ones_like(scale))
    rows = torch.as_tensor(starts, dtype=f64, device=device)[:, None] + torch.arange(keep, dtype=f64, device=device)
    center = scale * (rows + 0.5)                                         # (n, keep)
    low = torch.clamp(torch.trunc(center - support + 0.5), min=0)
    high = torch.minimum(torch.trunc(center + support + 0.5), size)
    j = torch.arange(in_max, dtype=f64, device=device)                    # (in_max,)
    x = ((j - center[..., None] + 0.5) * invscale[..., None]).abs()       # (n, keep, in_max)
    if mode == "bicubic":
        a = -0.5
        w = torch.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                        torch.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, torch.zeros_like(x)))
    else:
        w = torch.clamp(1 - x, min=0)
    w = w * ((j >= low[..., None]) & (j < high[..., None]))
    total = w.sum(-1, keepdim=True)
    w = torch.where(total != 0, w / total, w)
    return w.to(torch.float32)

"""Sliding-window inference over images larger than the training crops (DRIVE, CHASE_DB1 evaluation)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .transforms import Size, as_size


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of size `window` covering [0, length) with the given stride.

    The last window is shifted back to end exactly at `length` (rather than running past it), so every window lies
    inside the (padded) image. `length` must be >= `window`.
    """
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def gaussian_weight(window: tuple[int, int], sigma_scale: float = 0.125) -> torch.Tensor:
    """Separable Gaussian importance map (H, W) float32 peaking at the window centre, minimum clamped to 1e-3 of the
    peak so that pixels covered only by window borders still get a well-defined average.

    sigma = sigma_scale * window size per axis (1/8, the usual choice in medical sliding-window inference).
    """
    axes = []
    for n in window:
        coords = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        sigma = max(sigma_scale * n, 1e-6)
        axes.append(torch.exp(-0.5 * (coords / sigma) ** 2))
    weight = axes[0][:, None] * axes[1][None, :]
    weight = weight / weight.max()
    return weight.clamp_min(1e-3).to(torch.float32)


def sliding_window_inference(
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    window: Size = 256,
    overlap: float = 0.5,
    gaussian: bool = False,
    batch_size: int = 4,
    pad_value: float = 0.0,
) -> torch.Tensor:
    """Runs `predict_fn` on overlapping windows of `image` and averages the overlapping outputs.

    Windows of size `window` step by round(window * (1 - overlap)) (at least 1 pixel); the last window of each row and
    column is aligned with the image border so the whole image is covered with no window hanging over it. An image
    smaller than the window is padded at the bottom/right with `pad_value` and the output cropped back. Each output
    pixel is the (optionally Gaussian-weighted) mean of the predictions of every window covering it, so a predictor
    that acts pixel by pixel (e.g. a linear map of the input channels) gives exactly its full-image output.

    Args:
        predict_fn: maps a float batch (N, C, wh, ww) to (N, K, wh, ww) (logits or probabilities: averaging happens on
            whatever it returns).
        image: float (B, C, H, W).
        window: window size, int or (wh, ww).
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        gaussian: weight each window by `gaussian_weight` (favours window centres, where context is complete).
        batch_size: number of windows per `predict_fn` call.
        pad_value: value of the padding of images smaller than the window.

    Returns:
        float32 (B, K, H, W) on the image's device.

    Raises:
        ValueError: for a non-4-D image, an overlap outside [0, 1), a batch_size < 1, or a predictor output of the wrong
            shape.
    """
    if image.dim() != 4:
        raise ValueError(f"image must be (B, C, H, W), got shape {tuple(image.shape)}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if image.shape[0] == 0:
        raise ValueError("image must hold at least one image (B >= 1): the output channel count comes from predict_fn")
    win_h, win_w = as_size(window, "window")
    batch, _, height, width = image.shape
    padded = F.pad(image, (0, max(0, win_w - width), 0, max(0, win_h - height)), value=pad_value)
    pad_h, pad_w = padded.shape[-2:]
    stride_h = max(1, round(win_h * (1.0 - overlap)))
    stride_w = max(1, round(win_w * (1.0 - overlap)))
    boxes = [
        (top, left) for top in window_starts(pad_h, win_h, stride_h) for left in window_starts(pad_w, win_w, stride_w)
    ]
    weight = (
        gaussian_weight((win_h, win_w)).to(image.device) if gaussian else torch.ones(win_h, win_w, device=image.device)
    )

    output: torch.Tensor | None = None
    norm = torch.zeros(1, 1, pad_h, pad_w, dtype=torch.float32, device=image.device)
    # Windows of all images are batched together: (image b, box) pairs in order, batch_size at a time.
    jobs = [(b, box) for b in range(batch) for box in boxes]
    for chunk_start in range(0, len(jobs), batch_size):
        chunk = jobs[chunk_start : chunk_start + batch_size]
        crops = torch.stack([padded[b, :, top : top + win_h, left : left + win_w] for b, (top, left) in chunk])
        pred = predict_fn(crops)
        if pred.dim() != 4 or pred.shape[0] != len(chunk) or tuple(pred.shape[-2:]) != (win_h, win_w):
            raise ValueError(
                f"predict_fn must return (N, K, {win_h}, {win_w}) for N = {len(chunk)} windows, got {tuple(pred.shape)}"
            )
        if output is None:
            output = torch.zeros(batch, pred.shape[1], pad_h, pad_w, dtype=torch.float32, device=image.device)
        for (b, (top, left)), p in zip(chunk, pred, strict=True):
            output[b, :, top : top + win_h, left : left + win_w] += p.to(torch.float32) * weight
    for top, left in boxes:
        norm[..., top : top + win_h, left : left + win_w] += weight
    assert output is not None  # B >= 1 and every image has at least one window
    return (output / norm)[..., :height, :width]


def num_windows(height: int, width: int, window: Size = 256, overlap: float = 0.5) -> int:
    """Number of windows `sliding_window_inference` evaluates per image of size (height, width)."""
    win_h, win_w = as_size(window, "window")
    rows = window_starts(max(height, win_h), win_h, max(1, round(win_h * (1.0 - overlap))))
    cols = window_starts(max(width, win_w), win_w, max(1, round(win_w * (1.0 - overlap))))
    return len(rows) * len(cols)

"""Remote-sensing augmentations on batches of uint8 image tensors: random resized crops, flips and 90° rotations
(overhead imagery has no canonical "up"), and mild brightness/contrast jitter."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_resized_crop(images: torch.Tensor, size: int, scale: tuple[float, float], generator: torch.Generator
                        ) -> torch.Tensor:
    """Crop a random box of ``scale`` × area (aspect 3/4–4/3) from each image and resize it to size × size."""
    n, _, h, w = images.shape
    area = torch.empty(n).uniform_(*scale, generator=generator) * h * w
    log_ratio = torch.empty(n).uniform_(torch.log(torch.tensor(3 / 4)).item(), torch.log(torch.tensor(4 / 3)).item(),
                                        generator=generator)
    ratio = torch.exp(log_ratio)
    cw = torch.sqrt(area * ratio).clamp(8, w).round().long()
    ch = torch.sqrt(area / ratio).clamp(8, h).round().long()
    x0 = (torch.rand(n, generator=generator) * (w - cw + 1)).long()
    y0 = (torch.rand(n, generator=generator) * (h - ch + 1)).long()
    out = torch.empty(n, images.shape[1], size, size, dtype=torch.float32)
    for i in range(n):
        crop = images[i:i + 1, :, y0[i]:y0[i] + ch[i], x0[i]:x0[i] + cw[i]].float()
        out[i] = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return out


def flips_and_rotations(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image gets one of the 8 symmetries of the square."""
    k = torch.randint(0, 4, (images.shape[0],), generator=generator)
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    out = images.clone()
    for i in range(images.shape[0]):
        img = images[i]
        if flip[i]:
            img = img.flip(-1)
        out[i] = torch.rot90(img, int(k[i]), dims=(-2, -1))
    return out


def color_jitter(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness and contrast scaled by factors in [1 - strength, 1 + strength] (images in 0..255)."""
    if strength <= 0:
        return images
    n = images.shape[0]
    brightness = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * strength
    contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * strength
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images - mean) * contrast + mean) * brightness


def augment(images: torch.Tensor, size: int, scale: tuple[float, float], jitter: float,
            generator: torch.Generator) -> torch.Tensor:
    """uint8 (N, 3, H, W) → float (N, 3, size, size) in 0..255, augmented."""
    out = random_resized_crop(images, size, scale, generator)
    out = flips_and_rotations(out, generator)
    return color_jitter(out, jitter, generator).clamp_(0, 255)

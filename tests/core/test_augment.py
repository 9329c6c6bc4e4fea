"""The batch augmentations of rtk.augment, in particular the ImageNet-style random resized crop
(torchvision's RandomResizedCrop semantics, done for a whole batch with one grid_sample)."""
import math

import torch
import torch.nn.functional as F

from rtk.augment import augment, resized_crop, resized_crop_boxes


def test_a_box_of_the_whole_image_is_the_identity():
    x = torch.rand(3, 2, 12, 16)
    boxes = torch.tensor([[0.0, 0.0, 12.0, 16.0]] * 3)
    assert torch.allclose(resized_crop(x, boxes), x, atol=1e-6)


def test_a_box_is_that_region_resized_bilinearly():
    x = torch.rand(2, 3, 16, 16)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 6.0, 12.0, 10.0]])
    out = resized_crop(x, boxes)
    expected = [F.interpolate(x[i:i + 1, :, t:t + h, x0:x0 + w], size=(16, 16), mode="bilinear", align_corners=False)
                for i, (t, x0, h, w) in enumerate(boxes.long().tolist())]
    assert torch.allclose(out, torch.cat(expected), atol=1e-5)


def test_boxes_follow_random_resized_crop_bounds():
    g = torch.Generator().manual_seed(0)
    boxes = resized_crop_boxes(4000, 224, 224, g)
    top, left, h, w = boxes.unbind(1)
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 224).all() and (left + w <= 224).all()
    area = h * w / 224 ** 2
    assert area.min() >= 0.07 and area.max() <= 1.0  # scale (0.08, 1), up to rounding
    log_ratio = torch.log(w / h)
    assert log_ratio.abs().max() <= math.log(4 / 3) + 0.02
    assert 0.45 < area.mean() < 0.6  # uniform area fraction in [0.08, 1], less the rejected draws: about 0.54
    again = resized_crop_boxes(4000, 224, 224, torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again)  # seeded


def test_resized_crop_flip_keeps_shape_and_range_and_is_seeded():
    x = torch.rand(8, 3, 32, 32)
    a = augment(x, "resized-crop-flip", torch.Generator().manual_seed(1))
    b = augment(x, "resized-crop-flip", torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, x)

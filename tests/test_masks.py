"""Masks beside images: nearest-neighbour decoding, the cache, and paired geometric augmentation."""
import numpy as np
import pytest
import torch
from PIL import Image

from simclr_ad import augment, data, masks
from simclr_ad.config import AugmentConfig

NO_AUG = dict(aug_crop_scale_min=1.0, aug_crop_scale_max=1.0, aug_flip_prob=0.0, aug_rotate_deg=0.0,
              aug_translate=0.0, aug_brightness=0.0, aug_contrast=0.0, aug_gamma=0.0, aug_blur_prob=0.0,
              aug_noise_std=0.0)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _unnormalised(x):
    return x * augment.STD + augment.MEAN


def test_nearest_neighbour_upsampling_duplicates_pixels_and_stays_binary():
    small = np.zeros((20, 20), np.uint8)
    small[3, 5] = small[10:14, 2:9] = 255
    import io
    buffer = io.BytesIO()
    Image.fromarray(small).save(buffer, format="PNG")
    big = masks.decode_mask(buffer.getvalue(), 40)
    assert big.dtype == bool
    assert np.array_equal(big, np.kron(small > 127, np.ones((2, 2), bool)))  # each pixel a 2x2 block, by hand


def test_masks_are_padded_square_like_their_image():
    """A 40x20 image is padded top and bottom before resizing; its mask must be padded the same way."""
    import io
    image, mask = np.zeros((20, 40), np.uint8), np.zeros((20, 40), np.uint8)
    image[0:4, 0:4] = mask[0:4, 0:4] = 255
    for arr, name in ((image, "image"), (mask, "mask")):
        buffer = io.BytesIO()
        Image.fromarray(arr).save(buffer, format="PNG")
        if name == "image":
            decoded_image = data.decode_image(buffer.getvalue(), 40)[0]
        else:
            decoded_mask = masks.decode_mask(buffer.getvalue(), 40)
    assert np.array_equal(decoded_mask, decoded_image > 127)
    assert decoded_mask[10:14, 0:4].all() and decoded_mask.sum() == 16  # shifted down by the 10-row pad


def test_manifest_masks_load_beside_images_and_come_from_the_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    lines, drawn = ["path,mask,subject,slice,label"], []
    for i in range(4):
        _png(tmp_path / f"p{i}/img.png", rng.integers(0, 255, (48, 48)))
        mask = np.zeros((48, 48), np.uint8)
        mask[4 * i:4 * i + 6 + i, 10:20] = 255
        _png(tmp_path / f"p{i}/mask.png", mask)
        drawn.append(mask[1::2, 1::2] > 127)  # nearest 48 -> 24 keeps every second pixel, from the second
        lines.append(f"p{i}/img.png,p{i}/mask.png,p{i},1,{'tumour' if i else 'no_tumour'}")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    found = data.decode(data.scan(tmp_path), 24, tmp_path / "cache")
    assert found.masks.shape == (4, 1, 24, 24) and found.masks.dtype == torch.bool
    assert found.subjects == ["p0", "p1", "p2", "p3"]
    assert all(np.array_equal(found.masks[i, 0].numpy(), drawn[i]) for i in range(4))
    monkeypatch.setattr(masks, "decode_mask", lambda *a: (_ for _ in ()).throw(AssertionError("not cached")))
    again = data.decode(data.scan(tmp_path), 24, tmp_path / "cache")
    assert torch.equal(again.masks, found.masks)
    assert torch.equal(found.subset([2, 0]).masks, found.masks[[2, 0]])


def _pair(**changes):
    rng = np.random.default_rng(1)
    mask = torch.zeros(3, 1, 32, 32, dtype=torch.bool)
    mask[0, 0, 4:12, 3:9] = True
    mask[1, 0, 20:30, 18:31] = True
    mask[2, 0, 0:32:8, :] = True
    image = torch.from_numpy(rng.integers(0, 255, (3, 1, 32, 32), dtype=np.uint8))
    return image, mask, AugmentConfig(**{**NO_AUG, **changes})


def test_a_flipped_image_has_the_identically_flipped_mask():
    image, mask, cfg = _pair(aug_flip_prob=1.0)
    x, m = masks.augment_pair(image, mask, 32, cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(_unnormalised(x), image.flip(-1).float() / 255, atol=1e-5)
    assert torch.equal(m.bool(), mask.flip(-1))


def test_cropped_and_rotated_masks_follow_their_image_and_stay_binary():
    image, mask, cfg = _pair(aug_crop_scale_min=0.3, aug_crop_scale_max=0.5, aug_rotate_deg=20, aug_translate=0.05,
                             aug_flip_prob=0.5)
    image = mask.to(torch.uint8) * 255  # the image is its mask: warped alike, they must still agree
    x, m = masks.augment_pair(image, mask, 32, cfg, torch.Generator().manual_seed(3))
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    agree = ((_unnormalised(x) > 0.5) == m.bool()).float().mean()
    assert agree > 0.97, agree
    assert m.sum() > 0 and not torch.equal(m.bool(), mask)  # something was cropped


def test_intensity_augmentation_touches_the_image_only():
    image, mask, cfg = _pair(aug_brightness=0.5, aug_contrast=0.5, aug_gamma=0.5, aug_blur_prob=1.0,
                             aug_noise_std=0.1)
    x, m = masks.augment_pair(image, mask, 32, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(m.bool(), mask)
    assert not torch.allclose(_unnormalised(x), image.float() / 255, atol=1e-2)


def test_pair_draws_the_same_image_view_as_augment():
    image, mask, cfg = _pair(aug_crop_scale_min=0.5, aug_flip_prob=0.5, aug_rotate_deg=10, aug_brightness=0.3,
                             aug_blur_prob=0.5, aug_noise_std=0.05)
    x, _ = masks.augment_pair(image, mask, 24, cfg, torch.Generator().manual_seed(7))
    assert torch.equal(x, augment.augment(image, 24, cfg, torch.Generator().manual_seed(7)))


def test_resize_masks_is_nearest():
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1, 2] = True
    assert torch.equal(masks.resize_masks(mask, 8)[0, 0], torch.from_numpy(np.kron(mask[0, 0].numpy(), np.ones((2, 2), bool))))


@pytest.mark.parametrize("content,message", [(None, "does not exist"), (b"junk", "cannot be read")])
def test_bad_mask_is_named(tmp_path, content, message):
    _png(tmp_path / "a.png", np.zeros((8, 8)))
    _png(tmp_path / "b.png", np.zeros((8, 8)))
    if content is not None:
        (tmp_path / "m.png").write_bytes(content)
    (tmp_path / "manifest.csv").write_text("path,label,mask\na.png,A,m.png\nb.png,B,a.png\n")
    with pytest.raises(data.DataError, match=f"mask 'm.png' of 'a.png' {message}"):
        data.decode(data.scan(tmp_path), 8, tmp_path / "cache")

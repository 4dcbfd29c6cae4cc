"""``vlmdpo.data.images``: every legal image comes out as the RGB picture a viewer shows, the rest are refused by
name (and a huge image before its pixels are decoded)."""

import io
import time

import datasets
import numpy as np
import pytest
from PIL import Image

from vlmdpo.data.images import ImageError, load_image


def saved(image, path, **kwargs):
    image.save(path, **kwargs)
    return str(path)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    array = np.full((4, 6), 128 * 257, dtype=np.uint16)
    array[0, 0] = 65535
    path = saved(Image.fromarray(array), tmp_path / "grey16.png")
    assert Image.open(path).mode.startswith("I")
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (6, 4)
    assert out.getpixel((1, 1)) == (128, 128, 128) and out.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "blue")
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = saved(image, tmp_path / "rotated.jpg", exif=exif, quality=95)
    out = load_image(path)
    assert out.size == (20, 40)
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60  # the left half is now on top


def test_alpha_and_transparent_palettes_are_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    out = load_image(saved(rgba, tmp_path / "alpha.png"))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((2, 2)) == (255, 0, 0)
    assert all(abs(v - 127) <= 1 for v in out.getpixel((1, 0)))

    grey_alpha = Image.new("LA", (2, 2), (0, 0))
    assert load_image(saved(grey_alpha, tmp_path / "la.png")).getpixel((0, 0)) == (255, 255, 255)

    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 255, 0] + [255, 0, 0] * 255)
    palette.putpixel((0, 0), 0)
    out = load_image(saved(palette, tmp_path / "palette.png", transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (255, 0, 0)


def test_cmyk_palette_and_first_frame_of_an_animation(tmp_path):
    cmyk = Image.new("CMYK", (2, 2), (255, 0, 0, 0))  # full cyan
    assert load_image(saved(cmyk, tmp_path / "cmyk.jpg", quality=100)).getpixel((0, 0))[0] < 20
    frames = [Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")]
    path = saved(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(path).n_frames == 2
    assert load_image(path).getpixel((4, 4)) == (255, 0, 0)
    out = load_image(saved(Image.new("L", (3, 3), 77), tmp_path / "grey.png"))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (77, 77, 77)


def test_datasets_decoded_sixteen_bit_and_bytes(tmp_path):
    path = saved(Image.fromarray(np.full((2, 2), 64 * 257, dtype=np.uint16)), tmp_path / "g.png")
    ds = datasets.Dataset.from_dict({"image": [path]}).cast_column("image", datasets.Image())
    assert load_image(ds[0]["image"]).getpixel((0, 0)) == (64, 64, 64)
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (1, 2, 3)).save(buffer, format="PNG")
    assert load_image(buffer.getvalue()).getpixel((1, 1)) == (1, 2, 3)
    assert load_image({"bytes": buffer.getvalue(), "path": None}).getpixel((0, 0)) == (1, 2, 3)


def refused(value, kind, *words, **kwargs):
    with pytest.raises(ImageError) as info:
        load_image(value, **kwargs)
    assert info.value.kind == kind
    for word in words:
        assert word in str(info.value)
    assert len(info.value.fix) > 10
    return info.value


def test_a_huge_image_is_refused_before_it_is_decoded(tmp_path):
    path = saved(Image.new("1", (10000, 10000)), tmp_path / "huge.png")
    start = time.perf_counter()
    refused(path, "image_too_large", "10000x10000", "max_image_pixels")
    assert time.perf_counter() - start < 0.5  # a full decode of 10^8 pixels takes far longer
    assert load_image(path, max_pixels=None).size == (10000, 10000)
    refused(saved(Image.new("RGB", (20, 20)), tmp_path / "small.png"), "image_too_large", max_pixels=100)


def test_paths_stay_inside_the_dataset_folder(tmp_path):
    root = tmp_path / "data"
    (root / "imgs").mkdir(parents=True)
    saved(Image.new("RGB", (2, 2), "red"), root / "imgs" / "a.png")
    outside = saved(Image.new("RGB", (2, 2), "blue"), tmp_path / "outside.png")
    assert load_image("imgs/a.png", str(root)).getpixel((0, 0)) == (255, 0, 0)
    refused("../outside.png", "image_outside_root", "outside", image_root=str(root))
    refused(outside, "image_outside_root", image_root=str(root))
    refused("/proc/self/environ", "image_outside_root", image_root=str(root))
    refused("imgs/../../outside.png", "image_outside_root", image_root=str(root))
    assert load_image("../outside.png", str(root), allow_outside=True).getpixel((0, 0)) == (0, 0, 255)


def test_unusable_files_are_named(tmp_path):
    refused(str(tmp_path / "gone.png"), "missing_image", "gone.png")
    refused(str(tmp_path), "not_an_image", "regular file")
    (tmp_path / "notes.txt").write_text("not an image")
    refused(str(tmp_path / "notes.txt"), "not_an_image")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    refused(str(tmp_path / "cut.png"), "unreadable_image", "cannot be decoded")
    refused(12, "bad_image_value", "int")

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.data import DataConfig, ImageFolderError, load_image_folder

from .images import write_images


def _load(folder, **kw):
    return load_image_folder(DataConfig(root=str(folder), **kw), log=lambda *_: None)


def test_reads_every_format_and_mode(tmp_path):
    r = 8
    solid = np.full((r, r, 3), (204, 51, 0), np.uint8)  # in the GIF web palette
    Image.fromarray(solid).save(tmp_path / "a.png")
    Image.fromarray(solid).save(tmp_path / "b.jpg", quality=100)
    Image.fromarray(solid).save(tmp_path / "c.webp", lossless=True)
    Image.fromarray(solid).save(tmp_path / "d.bmp")
    frames = [
        Image.fromarray(solid).convert("P"),
        Image.fromarray(np.zeros((r, r, 3), np.uint8)).convert("P"),
    ]
    frames[0].save(tmp_path / "e.gif", save_all=True, append_images=frames[1:])  # first frame is used
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.full((r, r), 128, np.uint8)).save(tmp_path / "sub" / "f_grey.png")  # recursive
    Image.fromarray(np.full((r, r), 32768, np.uint16)).save(tmp_path / "g_16bit.png")
    rgba = np.zeros((r, r, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 0  # fully transparent red
    Image.fromarray(rgba).save(tmp_path / "h_rgba.png")
    la = np.zeros((r, r, 2), np.uint8)
    la[..., 1] = 255  # opaque black
    Image.fromarray(la, "LA").save(tmp_path / "i_la.png")
    (tmp_path / "notes.txt").write_text("not an image")
    imgs, report = _load(tmp_path, resolution=r, background=(0, 0, 255))
    assert imgs.shape == (9, 3, r, r) and report.other_files == 1 and not report.skipped
    px = ((imgs[:, :, 3, 3] + 1) / 2 * 255).round()  # [N, 3] in file-name order
    expect_solid = torch.tensor([204.0, 51, 0])
    for k in range(5):  # png, jpg, webp, bmp, gif
        assert torch.allclose(px[k], expect_solid, atol=3), (k, px[k])
    assert torch.allclose(px[5], torch.tensor([128.0, 128, 128]))  # g_16bit sorts before sub/
    assert report.high_bit == 1 and report.transparent == 2
    assert torch.allclose(px[6], torch.tensor([0.0, 0, 255]))  # transparent -> background colour
    assert torch.allclose(px[7], torch.tensor([0.0, 0, 0]))  # opaque LA keeps its grey
    assert torch.allclose(px[8], torch.tensor([128.0, 128, 128]))
    # 16-bit precision is kept: a value between two 8-bit levels survives
    Image.fromarray(np.full((r, r), 32896 + 64, np.uint16)).save(tmp_path / "g_16bit.png")
    imgs16, _ = _load(tmp_path, resolution=r, channels=1)
    assert imgs16.shape[1] == 1
    assert ((imgs16[5, 0, 0, 0] + 1) / 2).item() == pytest.approx((32896 + 64) / 65535, abs=1e-6)


def test_empty_folder_message(tmp_path):
    with pytest.raises(ImageFolderError, match="the folder is empty"):
        _load(tmp_path)


def test_missing_folder_message(tmp_path):
    with pytest.raises(ImageFolderError, match="no such folder"):
        _load(tmp_path / "nope")


def test_only_non_images_message(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.csv").write_text("1,2")
    with pytest.raises(ImageFolderError, match=r"not an image folder \(0 images among 2 files"):
        _load(tmp_path)


def test_corrupt_and_truncated_files_are_skipped_listed_and_counted(tmp_path):
    write_images(tmp_path, n=3, size=(16, 16))
    (tmp_path / "corrupt.png").write_bytes(b"this is not a png")
    data = (tmp_path / "img_000.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=r"skipped 2 of 5 image files") as rec:
        imgs, report = _load(tmp_path, resolution=16)
    msg = str(rec[0].message)
    assert "corrupt.png" in msg and "truncated.png" in msg
    assert imgs.shape[0] == 3 and len(report.skipped) == 2


def test_nothing_readable_stops_the_run(tmp_path):
    (tmp_path / "a.png").write_bytes(b"garbage")
    (tmp_path / "b.jpg").write_bytes(b"")
    with pytest.raises(ImageFolderError, match=r"(?s)skipped 2 of 2 .*no readable image is left"):
        _load(tmp_path)


def test_small_images_are_upscaled_with_a_warning(tmp_path):
    write_images(tmp_path, n=2, size=(10, 12))
    with pytest.warns(UserWarning, match=r"2 images are smaller than data.resolution=16 and were upscaled"):
        imgs, _ = _load(tmp_path, resolution=16)
    assert imgs.shape == (2, 3, 16, 16)


@pytest.mark.parametrize(
    "flags",
    [
        ["--data.resolution=30"],
        ["--data.resolution=24"],
        ["--data.resolution=30", "--patch.p=1.0"],
        ["--data.resolution=40", "--patch.p=0"],
        ["--data.resolution=30", "--model.block_out_channels=[32,64]", "--model.attention=[false,true]"],
    ],
)
def test_resolution_advice_leads_to_a_valid_setting(flags):
    """Every suggestion in the message, applied as written, gives a config the UNet accepts."""
    import re

    from diffusion.train import DiffusionConfig
    from genai_train.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config(DiffusionConfig, None, flags)
    msg = str(err.value)
    assert "does not fit the UNet" in msg and "patch.p=1.0, which" not in msg
    fixes = re.findall(r"--(data\.resolution|patch\.p)=([0-9.]+)", msg.split(" Use ")[1])
    assert fixes, msg
    for key, value in fixes:
        load_config(DiffusionConfig, None, [*flags, f"--{key}={value}"])  # no error: the advice works
    load_config(DiffusionConfig, None, ["--data.resolution=32"])  # fine


def test_resolution_30_is_not_sent_to_patch_p_1():
    """R = 30 with a 3-level UNet fails at p = 1 too, so the message must not suggest it."""
    from diffusion.train import DiffusionConfig
    from genai_train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"Use --data.resolution=32$"):
        load_config(DiffusionConfig, None, ["--data.resolution=30"])
    with pytest.raises(ConfigError, match=r"not divisible by 4, the UNet's downsampling"):
        load_config(DiffusionConfig, None, ["--data.resolution=24"])  # patches 6, 12, 24 vs 3 levels


def test_decoded_once_and_cached_on_disk(tmp_path):
    write_images(tmp_path / "d", n=3, size=(16, 16))
    cfg = DataConfig(root=str(tmp_path / "d"), resolution=16, cache_dir=str(tmp_path / "cache"))
    a, _ = load_image_folder(cfg, log=lambda *_: None)
    assert len(list((tmp_path / "cache").glob("images_*.pt"))) == 1
    msgs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b, _ = load_image_folder(cfg, log=msgs.append)
    assert torch.equal(a, b) and "from cache" in msgs[0]


def _png_rgb16(path, arr):
    """Write a 16-bit RGB PNG [H, W, 3] uint16 (Pillow cannot write one)."""
    import struct
    import zlib

    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def test_16bit_colour_png_keeps_full_precision(tmp_path):
    pytest.importorskip("png")
    arr = np.empty((8, 8, 3), np.uint16)
    arr[...] = (1000, 40000, 65535)  # 1000 / 65535 is not an 8-bit level
    _png_rgb16(tmp_path / "rgb16.png", arr)
    imgs, report = _load(tmp_path, resolution=8)
    got = ((imgs[0, :, 4, 4] + 1) / 2).double()
    assert torch.allclose(got, torch.tensor([1000, 40000, 65535], dtype=torch.float64) / 65535, atol=1e-6)
    assert report.high_bit == 1

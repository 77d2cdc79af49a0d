"""Decoding real files of every supported kind, bad inputs, the resize policy and masks."""

from __future__ import annotations

import io
import os
import random
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from badinput import bomb_png, build_bad_corpus, png_bytes, write_dicom
from xaicxr.io.imaging import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    ImageDecodeError,
    ImageInfo,
    precheck,
    read_image,
    read_mask,
)
from xaicxr.io.resize import fit_square, fit_square_box, fit_square_mask

REAL_DATA = Path("/work/shared/data/cxr3-real")
LUMA = np.array([0.299, 0.587, 0.114])
LOSSLESS_TOL = 0.5 / 255 + 1e-5


def luma(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float64)[..., :3] @ LUMA


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def decode(path: Path, **kwargs) -> tuple[np.ndarray, ImageInfo]:
    """read_image plus the invariants every successful decode must satisfy."""
    image, info = read_image(path, **kwargs)
    assert image.dtype == np.float32 and image.ndim == 2
    assert image.shape == (info.height, info.width)
    assert np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0
    return image, info


def gradient(height: int = 6, width: int = 40, top: int = 255, dtype=np.uint8) -> np.ndarray:
    return np.tile(np.linspace(0, top, width).round().astype(dtype), (height, 1))


def rng_rgb(shape=(6, 10, 3), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# PIL modes


def test_public_constants():
    expected = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
    assert expected == SUPPORTED_SUFFIXES
    assert DEFAULT_MAX_PIXELS == 100_000_000


@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("BMP", ".bmp"), ("TIFF", ".tif")])
def test_mode_L(tmp_path, fmt, suffix):
    g = gradient()
    image, info = decode(save(Image.fromarray(g), tmp_path / f"g{suffix}"))
    assert info == ImageInfo(format=fmt, mode="L", width=40, height=6)
    np.testing.assert_allclose(image, g / 255, atol=1e-6)


def test_mode_LA_drops_alpha(tmp_path):
    g = gradient()
    alpha = np.random.default_rng(0).integers(0, 256, g.shape, dtype=np.uint8)
    img = Image.merge("LA", [Image.fromarray(g), Image.fromarray(alpha)])
    image, info = decode(save(img, tmp_path / "la.png"))
    assert info.mode == "LA"
    np.testing.assert_allclose(image, g / 255, atol=1e-6)


@pytest.mark.parametrize("mode, suffix", [("I;16", ".png"), ("I;16", ".tif"), ("I;16B", ".tif")])
def test_16_bit_modes_scale_by_65535(tmp_path, mode, suffix):
    g = gradient(top=65535, dtype=np.uint16)
    raw = g.astype(">u2" if mode.endswith("B") else "<u2").tobytes()
    image, info = decode(save(Image.frombytes(mode, (40, 6), raw), tmp_path / f"x{suffix}"))
    assert info.mode == mode
    np.testing.assert_allclose(image, g / 65535, atol=1e-6)


def test_16_bit_png_keeps_precision(tmp_path):
    values = np.arange(1000, 1016, dtype=np.uint16).reshape(2, 8)
    (tmp_path / "p.png").write_bytes(png_bytes(values))
    image, info = decode(tmp_path / "p.png")
    assert info.mode == "I;16"
    assert len(np.unique(image)) == values.size
    np.testing.assert_allclose(np.diff(np.sort(image.ravel())), 1 / 65535, rtol=1e-3)


@pytest.mark.parametrize(
    "values, expected",
    [
        (np.array([[0, 1000, 65535]]), np.array([[0, 1000, 65535]]) / 65535),
        (np.array([[0, 70_000, 2**31 - 1]]), np.array([[0, 70_000, 2**31 - 1]]) / (2**31 - 1)),
        (np.array([[-50, 0, 150]]), np.array([[0.0, 0.25, 1.0]])),
    ],
    ids=["16-bit-range", "31-bit-range", "negative-minmax"],
)
def test_mode_I(tmp_path, values, expected):
    image, info = decode(save(Image.fromarray(values.astype(np.int32)), tmp_path / "i.tif"))
    assert info.mode == "I"
    np.testing.assert_allclose(image, expected, atol=1e-6)


@pytest.mark.parametrize(
    "values, expected",
    [
        ([[0.0, 0.25, 1.0]], [[0.0, 0.25, 1.0]]),
        ([[-2.0, 0.0, 2.0]], [[0.0, 0.5, 1.0]]),
        ([[np.nan, 0.5, np.inf]], [[0.5, 0.5, 0.5]]),
        ([[7.0, 7.0, 7.0]], [[0.0, 0.0, 0.0]]),
    ],
    ids=["unit-range-kept", "minmax", "non-finite", "constant"],
)
def test_mode_F(tmp_path, values, expected):
    img = Image.fromarray(np.array(values, dtype=np.float32))
    image, info = decode(save(img, tmp_path / "f.tif"))
    assert info.mode == "F"
    np.testing.assert_allclose(image, expected, atol=1e-6)


def palette_image(transparency: int | None = None) -> tuple[Image.Image, np.ndarray]:
    palette = rng_rgb((256, 3), seed=2)
    index = np.random.default_rng(3).integers(0, 256, (6, 10), dtype=np.uint8)
    img = Image.frombytes("P", (10, 6), index.tobytes())
    img.putpalette(palette.ravel().tolist())
    if transparency is not None:
        img.info["transparency"] = transparency
    return img, luma(palette[index]) / 255


@pytest.mark.parametrize("transparency", [None, 0], ids=["plain", "transparent-index"])
def test_mode_P(tmp_path, transparency):
    img, expected = palette_image(transparency)
    kwargs = {} if transparency is None else {"transparency": transparency}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, info = decode(save(img, tmp_path / "p.png", **kwargs))
    assert info.mode == "P"
    np.testing.assert_allclose(image, expected, atol=LOSSLESS_TOL)


def test_mode_1(tmp_path):
    bits = (np.indices((6, 10)).sum(axis=0) % 2).astype(bool)
    img = Image.fromarray(bits.astype(np.uint8) * 255).convert("1")
    image, info = decode(save(img, tmp_path / "b.png"))
    assert info.mode == "1"
    np.testing.assert_array_equal(image, bits.astype(np.float32))


@pytest.mark.parametrize(
    "mode, suffix", [("RGB", ".png"), ("RGBA", ".png"), ("RGB", ".bmp"), ("RGB", ".tif")]
)
def test_colour_modes_use_bt601_luma(tmp_path, mode, suffix):
    pixels = rng_rgb((6, 10, 4 if mode == "RGBA" else 3))
    pixels[..., 3:] = np.where(np.arange(10) % 2, 0, 255)[None, :, None]  # alpha ignored, even 0
    image, info = decode(save(Image.fromarray(pixels, mode), tmp_path / f"c{suffix}"))
    assert info.mode == mode
    np.testing.assert_allclose(image, luma(pixels) / 255, atol=LOSSLESS_TOL)


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr"])
def test_modes_converted_through_rgb(tmp_path, mode):
    img = Image.fromarray(rng_rgb()).convert(mode)
    image, info = decode(save(img, tmp_path / "c.tif"))
    assert info.mode == mode
    np.testing.assert_allclose(image, luma(np.asarray(img.convert("RGB"))) / 255, atol=LOSSLESS_TOL)


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_jpeg(tmp_path, mode):
    img = Image.fromarray(rng_rgb((16, 24, 3))).convert(mode)
    path = save(img, tmp_path / "j.jpg", quality=95)
    image, info = decode(path)
    assert (info.format, info.mode) == ("JPEG", mode)
    with Image.open(path) as reference:
        expected = luma(np.asarray(reference.convert("RGB"))) / 255
    np.testing.assert_allclose(image, expected, atol=LOSSLESS_TOL)


def test_multi_frame_tiff_uses_first_frame(tmp_path):
    first, second = Image.fromarray(gradient()), Image.new("L", (40, 6), 255)
    path = save(first, tmp_path / "m.tif", save_all=True, append_images=[second])
    with Image.open(path) as check:
        assert check.n_frames == 2
    image, _ = decode(path)
    np.testing.assert_allclose(image, gradient() / 255, atol=1e-6)


def test_content_decides_format_not_suffix(tmp_path):
    path = tmp_path / "actually_a_png.jpg"
    path.write_bytes(png_bytes(gradient()))
    assert decode(path)[1].format == "PNG"


@pytest.mark.parametrize("orientation, bright_half", [(6, "top"), (8, "bottom")])
def test_exif_orientation(tmp_path, orientation, bright_half):
    stored = np.zeros((32, 64), dtype=np.uint8)
    stored[:, :32] = 255  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(Image.fromarray(stored), tmp_path / "o.jpg", exif=exif, quality=95)
    image, info = decode(path)
    assert (info.width, info.height) == (32, 64) and image.shape == (64, 32)
    top, bottom = image[:32].mean(), image[32:].mean()
    assert (top > 0.9 and bottom < 0.1) if bright_half == "top" else (bottom > 0.9 and top < 0.1)


# --------------------------------------------------------------------------------------------
# guards


def test_max_pixels_is_checked_before_decoding(tmp_path):
    path = tmp_path / "g.png"
    path.write_bytes(png_bytes(gradient()))
    reason = r"too many pixels: 40x6 > 100 \(decompression bomb guard\)"
    with pytest.raises(ImageDecodeError, match=reason):
        read_image(path, max_pixels=100)
    assert decode(path, max_pixels=240)[0].shape == (6, 40)


def test_real_bomb_is_refused_quickly(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    assert path.stat().st_size < 200_000
    with pytest.raises(ImageDecodeError, match="too many pixels: 30000x30000"):
        read_image(path)


def test_pil_global_limit_does_not_decide(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    path = tmp_path / "g.png"
    path.write_bytes(png_bytes(gradient()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode(path)[0].shape == (6, 40)


def test_truncated_raises_even_if_pil_was_told_to_load_truncated(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    path = tmp_path / "t.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated image"):
        read_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_file_level_errors(tmp_path):
    (tmp_path / "dir.png").mkdir()
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.png")  # must be refused, not block on open
        assert precheck(tmp_path / "fifo.png") == "not a regular file"
        with pytest.raises(ImageDecodeError, match="not a regular file"):
            read_image(tmp_path / "fifo.png")
    (tmp_path / "empty.png").write_bytes(b"")
    cases = {
        "dir.png": "not a regular file (directory)",
        "empty.png": "empty file (0 bytes)",
        "missing.png": "file not found",
    }
    for name, reason in cases.items():
        with pytest.raises(ImageDecodeError, match=re.escape(reason)):
            read_image(tmp_path / name)


# --------------------------------------------------------------------------------------------
# DICOM


def dicom_gradient(bits: int = 16, top: int | None = None, height: int = 4, width: int = 64):
    return gradient(height, width, top=(2**bits - 1) if top is None else top, dtype=np.uint16)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_dicom_monochrome2_minmax(tmp_path, bits):
    raw = dicom_gradient(bits) // 2 + 3  # not spanning the full range: min-max stretches it
    image, info = decode(write_dicom(tmp_path / "m2.dcm", raw, bits=bits))
    assert info == ImageInfo(format="DICOM", mode=f"MONOCHROME2/{bits}", width=64, height=4)
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    raw = dicom_gradient(12)
    mono2, _ = decode(write_dicom(tmp_path / "m2.dcm", raw, bits=12))
    mono1, info = decode(write_dicom(tmp_path / "m1.dcm", raw, bits=12, photometric="MONOCHROME1"))
    assert info.mode == "MONOCHROME1/12"
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert mono1[0, 0] == 1.0 and mono1[0, -1] == 0.0


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, written out independently of the implementation."""
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


def test_dicom_rescale_then_window(tmp_path):
    raw = dicom_gradient(12, top=2000, width=2001)  # raw 0..2000, one column per value
    path = write_dicom(tmp_path / "w.dcm", raw, bits=12, intercept=-1000, window=(0, 201))
    image, _ = decode(path)
    np.testing.assert_allclose(image, linear_window(raw - 1000.0, 0, 201), atol=1e-6)
    assert image[0, 899] == 0.0 and image[0, 1101] == 1.0 and abs(image[0, 1000] - 0.5) < 0.01
    unscaled, _ = decode(write_dicom(tmp_path / "u.dcm", raw, bits=12, window=(0, 201)))
    assert unscaled[0, 1000] == 1.0  # without the intercept the same window sits elsewhere


def test_dicom_negative_slope_inverts(tmp_path):
    raw = dicom_gradient(12)
    image, _ = decode(write_dicom(tmp_path / "s.dcm", raw, bits=12, slope=-2.0, intercept=5.0))
    np.testing.assert_allclose(image, 1.0 - raw / raw.max(), atol=1e-6)


def test_dicom_signed_pixels(tmp_path):
    raw = np.tile(np.linspace(-2000, 2000, 41).astype(np.int16), (3, 1))
    image, info = decode(write_dicom(tmp_path / "s.dcm", raw, bits=16, pixel_representation=1))
    np.testing.assert_allclose(image, (raw + 2000) / 4000, atol=1e-6)
    windowed, _ = decode(
        write_dicom(tmp_path / "sw.dcm", raw, bits=16, pixel_representation=1, window=(0, 2001))
    )
    np.testing.assert_allclose(windowed, linear_window(raw.astype(float), 0, 2001), atol=1e-6)


def test_dicom_8_bit_signed(tmp_path):
    raw = np.array([[-128, -1, 0, 127]], dtype=np.int8)
    image, info = decode(write_dicom(tmp_path / "s8.dcm", raw, bits=8, pixel_representation=1))
    assert info.mode == "MONOCHROME2/8"
    np.testing.assert_allclose(image, (raw.astype(float) + 128) / 255, atol=1e-6)


@pytest.mark.parametrize("bits, value", [(12, 100), (16, 100), (12, 0)])
def test_dicom_constant_image(tmp_path, bits, value):
    image, _ = decode(write_dicom(tmp_path / "c.dcm", np.full((4, 4), value, np.uint16), bits=bits))
    np.testing.assert_allclose(image, value / (2**bits - 1), atol=1e-7)


def test_dicom_voi_lut_sequence(tmp_path):
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    raw = dicom_gradient(12)
    path = write_dicom(tmp_path / "lut.dcm", raw, bits=12, window=(10, 20))
    lut = np.sqrt(np.arange(4096) / 4095 * 65535 * 65535).astype(np.uint16) // 16
    ds = dcmread(path)
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])
    item.add_new(0x00283006, "US", lut.tolist())
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(path, enforce_file_format=True)
    image, _ = decode(path)
    expected = lut[raw].astype(float)
    np.testing.assert_allclose(image, (expected - expected.min()) / np.ptp(expected), atol=1e-6)


def test_dicom_multi_frame_uses_first_frame(tmp_path):
    frames = np.stack([dicom_gradient(12), np.zeros((4, 64), np.uint16)])
    image, info = decode(write_dicom(tmp_path / "mf.dcm", frames, bits=12))
    assert image.shape == (4, 64) and (info.width, info.height) == (64, 4)
    np.testing.assert_allclose(image, dicom_gradient(12) / 4095, atol=1e-6)


def test_dicom_rgb(tmp_path):
    pixels = rng_rgb()
    image, info = decode(write_dicom(tmp_path / "rgb.dcm", pixels, photometric="RGB", bits=8))
    assert info.mode == "RGB/8"
    np.testing.assert_allclose(image, luma(pixels) / 255, atol=1e-5)


def test_dicom_without_preamble_and_without_suffix(tmp_path):
    raw = dicom_gradient(12)
    full = write_dicom(tmp_path / "full.dcm", raw, bits=12).read_bytes()
    (tmp_path / "bare.dcm").write_bytes(full[132:])  # file meta group, no preamble
    (tmp_path / "1.2.3.4").write_bytes(full)
    (tmp_path / "bare_no_suffix").write_bytes(full[132:])
    assert precheck(tmp_path / "1.2.3.4") is None
    assert "unsupported" in precheck(tmp_path / "bare_no_suffix")
    for name in ("bare.dcm", "1.2.3.4"):
        image, info = decode(tmp_path / name)
        assert info.format == "DICOM"
        np.testing.assert_allclose(image, raw / 4095, atol=1e-6)


def test_dicom_without_file_meta(tmp_path):
    """Old ACR-NEMA style: a bare implicit-VR dataset, no preamble and no transfer syntax."""
    from pydicom import dcmread

    raw = dicom_gradient(12)
    ds = dcmread(write_dicom(tmp_path / "full.dcm", raw, bits=12))
    del ds.file_meta
    ds.preamble = None
    ds.save_as(tmp_path / "bare.dcm", implicit_vr=True, little_endian=True)
    assert (tmp_path / "bare.dcm").read_bytes()[:2] == b"\x08\x00"
    image, _ = decode(tmp_path / "bare.dcm")
    np.testing.assert_allclose(image, raw / 4095, atol=1e-6)


def test_dicom_palette_colour(tmp_path):
    from pydicom import dcmread

    index = np.tile(np.arange(8, dtype=np.uint8), (2, 1))
    ds = dcmread(write_dicom(tmp_path / "p.dcm", index, bits=8))
    ds.PhotometricInterpretation = "PALETTE COLOR"
    red = (np.arange(8) * 8000).astype(np.uint16)
    green, blue = np.zeros(8, np.uint16), np.full(8, 65535, np.uint16)
    for colour, lut in (("Red", red), ("Green", green), ("Blue", blue)):
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [8, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut.astype("<u2").tobytes())
    ds.save_as(tmp_path / "p.dcm", enforce_file_format=True)
    image, info = decode(tmp_path / "p.dcm")
    assert info.mode == "PALETTE COLOR/8"
    expected = luma(np.stack([red, green, blue], axis=-1)[index]) / 65535
    np.testing.assert_allclose(image, expected, atol=1e-5)


def test_dicom_compressed_without_decoder(tmp_path):
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    path = write_dicom(tmp_path / "c.dcm", dicom_gradient(12), bits=12)
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageDecodeError, match="^unreadable DICOM: "):
        read_image(path)


def test_dicom_bomb_refused_before_pixel_access(tmp_path):
    from pydicom import dcmread

    path = write_dicom(tmp_path / "b.dcm", np.zeros((2, 2), np.uint16))
    ds = dcmread(path)
    ds.Rows = ds.Columns = 30000
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageDecodeError, match=r"too many pixels: 30000x30000 > 100000000"):
        read_image(path)


# --------------------------------------------------------------------------------------------
# bad inputs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("bad")
    return root, build_bad_corpus(root)


def reason_for(path: Path, root: Path) -> str | None:
    reason = precheck(path, root=root)
    if reason is not None:
        return reason
    try:
        decode(path)
    except ImageDecodeError as e:
        return str(e)
    return None


def test_bad_corpus_has_every_kind(corpus):
    _, expected = corpus
    keywords = set(expected.values())
    kinds = {"", "empty", "truncated", "not an image", "too many pixels", "DICOM", "hidden"}
    assert kinds | {"unsupported", "symlink", "corrupt"} <= keywords
    assert sum(1 for k in expected.values() if k == "truncated") == 2
    assert sum(1 for k in expected.values() if k == "DICOM") == 2
    assert all(k.startswith(("a/", "b/")) for k in expected)


def test_bad_corpus_reasons(corpus):
    root, expected = corpus
    for rel, keyword in expected.items():
        reason = reason_for(root / rel, root)
        if keyword:
            assert reason is not None and keyword.lower() in reason.lower(), (rel, reason)
        else:
            assert reason is None, (rel, reason)


def test_read_image_on_corpus_raises_only_decode_errors(corpus):
    root, _ = corpus
    for path in sorted(root.rglob("*")):
        try:
            decode(path)
        except ImageDecodeError as e:
            assert str(e) and "\n" not in str(e)


def test_precheck_reasons(tmp_path):
    (tmp_path / "ok.PNG").write_bytes(b"x")
    (tmp_path / "noext").write_bytes(b"x" * 200)
    assert precheck(tmp_path / "ok.PNG") is None  # suffix check is case-insensitive, no decoding
    assert precheck(tmp_path / "noext") == "unsupported file type: no suffix and no DICOM preamble"
    assert precheck(tmp_path / "missing.png") == "file not found"
    assert "unreadable" in precheck(Path("nul\x00byte.png"))
    hidden_root = tmp_path / ".cache" / "kagglehub"
    hidden_root.mkdir(parents=True)
    (hidden_root / "x.png").write_bytes(png_bytes(gradient()))
    assert "hidden" in precheck(hidden_root / "x.png")
    assert precheck(hidden_root / "x.png", root=hidden_root) is None
    assert "hidden" in precheck(hidden_root / ".x.png", root=hidden_root)
    assert "hidden" in precheck(Path(".cache/x.png"))
    assert precheck(Path("../data/x.png")) == "file not found"


def fuzz_seeds(tmp_path: Path) -> dict[str, bytes]:
    buf = io.BytesIO()
    Image.fromarray(rng_rgb((12, 12, 3))).save(buf, "JPEG")
    jpeg = buf.getvalue()
    small = gradient(8, 8)
    seeds = {".png": png_bytes(small), ".jpg": jpeg}
    for fmt, suffix in (("BMP", ".bmp"), ("TIFF", ".tif")):
        buf = io.BytesIO()
        Image.fromarray(small).save(buf, fmt)
        seeds[suffix] = buf.getvalue()
    dicom = write_dicom(tmp_path / "seed.dcm", dicom_gradient(12, height=4, width=8), bits=12)
    seeds[".dcm"] = dicom.read_bytes()
    return seeds


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fuzz_never_raises_anything_else(tmp_path):
    rnd = random.Random(1234)
    seeds = fuzz_seeds(tmp_path)
    cases: list[tuple[str, bytes]] = []
    for suffix, data in seeds.items():
        cuts = {1, 4, 8, 16, 33, 100, 131, 132, 200} | {len(data) * k // 7 for k in range(1, 7)}
        cases += [(suffix, data[:cut]) for cut in sorted(cuts)]
        for _ in range(40):
            mutated = bytearray(data)
            for _ in range(rnd.randint(1, 6)):
                mutated[rnd.randrange(len(mutated))] = rnd.randrange(256)
            cases.append((suffix, bytes(mutated)))
        cases.append((suffix, os.urandom(300)))
        cases.append((suffix, data[:8] + os.urandom(300)))
    cases.append((".dcm", b"\x00" * 128 + b"DICM" + os.urandom(200)))
    for i, (suffix, data) in enumerate(cases):
        path = tmp_path / f"f{i}{suffix}"
        path.write_bytes(data)
        try:
            decode(path, max_pixels=1_000_000)
        except ImageDecodeError as e:
            assert str(e)


# --------------------------------------------------------------------------------------------
# resize policy and masks


def test_fit_square_tall_image_is_padded_left_and_right():
    out = fit_square(np.ones((100, 50), np.float32), 64)
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert fit_square_box((100, 50), 64) == (0, 16, 64, 32)
    np.testing.assert_allclose(out[:, 16:48], 1.0, atol=1e-6)
    assert not out[:, :16].any() and not out[:, 48:].any()


def test_fit_square_wide_image_odd_padding():
    top, left, height, width = fit_square_box((21, 64), 64)
    assert (height, width) == (21, 64) and (top, left) == (21, 0)
    out = fit_square(np.ones((21, 64)), 64)
    assert out[:21].sum() == 0 and out[42:].sum() == 0 and np.allclose(out[21:42], 1.0)


def test_fit_square_preserves_aspect_and_upscales():
    image = np.zeros((3, 6), np.float32)
    image[:, 3:] = 1.0
    out = fit_square(image, 12)
    assert fit_square_box(image.shape, 12) == (3, 0, 6, 12)
    assert out[3:9, :5].max() < 0.5 < out[3:9, 7:].min()


def test_stretch_and_crop_fill_the_square_without_padding():
    image = np.zeros((100, 50), np.float32)
    image[:, :25] = 1.0
    stretched = fit_square(image, 32, policy="stretch")
    assert fit_square_box(image.shape, 32, "stretch") == (0, 0, 32, 32)
    assert stretched[:, :15].min() > 0.99 and stretched[:, 17:].max() < 0.01
    tall = np.linspace(0, 1, 100, dtype=np.float32)[:, None].repeat(50, axis=1)
    cropped = fit_square(tall, 10, policy="crop")
    np.testing.assert_array_equal(cropped, fit_square(tall[25:75], 10, policy="stretch"))
    np.testing.assert_array_equal(fit_square(tall.T, 10, policy="crop"),
                                  fit_square(tall.T[:, 25:75], 10, policy="stretch"))
    assert fit_square_box((100, 50), 10, "crop") == (0, 0, 10, 10)
    mask = np.zeros((100, 50), bool)
    mask[:, :25] = True
    assert fit_square_mask(mask, 32, "stretch")[:, :16].all()
    with pytest.raises(ValueError, match="pad, stretch, crop"):
        fit_square(image, 32, policy="squash")


def test_pad_of_a_square_image_is_the_plain_resize_and_every_policy_gives_the_square():
    rng = np.random.default_rng(1)
    square = rng.random((40, 40)).astype(np.float32)
    np.testing.assert_array_equal(fit_square(square, 16, policy="pad"), fit_square(square, 16, policy="stretch"))
    np.testing.assert_array_equal(fit_square(square, 16, policy="pad"), fit_square(square, 16, policy="crop"))
    for shape in ((40, 40), (30, 50), (50, 30), (7, 64)):
        for policy in ("pad", "stretch", "crop"):
            assert fit_square(rng.random(shape), 24, policy=policy).shape == (24, 24)


def test_mode_L_makes_rgb_and_gray_files_of_one_picture_identical(tmp_path):
    from xaicxr.io.resize import to_mode

    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    colour, _ = read_image(tmp_path / "colour.png")
    gray, _ = read_image(tmp_path / "gray.png")
    assert not np.allclose(colour * 255, np.round(colour * 255))  # as decoded, RGB has levels L has not
    np.testing.assert_allclose(to_mode(colour, "L"), gray, atol=1 / 255 + 1e-6)
    levels = to_mode(colour, "L") * 255
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    np.testing.assert_array_equal(fit_square(colour, 8, mode="L"), fit_square(to_mode(colour, "L"), 8))
    assert to_mode(colour, None) is colour
    with pytest.raises(ValueError, match="mode must be one of L"):
        to_mode(colour, "RGB")


def test_fit_square_antialiases_when_reducing():
    checker = (np.indices((128, 128)).sum(axis=0) % 2).astype(np.float32)
    out = fit_square(checker, 32)
    np.testing.assert_allclose(out, 0.5, atol=0.02)
    nearest = fit_square(checker, 32, resample="nearest")
    assert set(np.unique(nearest)) <= {0.0, 1.0}


def test_fit_square_square_input_and_errors():
    image = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    np.testing.assert_array_equal(fit_square(image, 16), image)
    with pytest.raises(ValueError):
        fit_square(np.zeros((4, 4, 3)), 8)
    with pytest.raises(ValueError):
        fit_square(image, 0)
    with pytest.raises(ValueError):
        fit_square(image, 8, resample="cubic")


def test_fit_square_mask_stays_binary():
    mask = np.zeros((40, 20), bool)
    mask[10:30, 5:15] = True
    out = fit_square_mask(mask, 16)
    assert out.dtype == bool and out.shape == (16, 16)
    assert out[:, :4].sum() == 0 and out[:, 12:].sum() == 0 and out.any()


@pytest.mark.parametrize("foreground", [1, 255], ids=["zero-one", "zero-255"])
def test_read_mask_L(tmp_path, foreground):
    m = np.zeros((8, 12), np.uint8)
    m[2:6, 3:9] = foreground
    path = tmp_path / "m.png"
    path.write_bytes(png_bytes(m))
    mask = read_mask(path)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, m > 0)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "1", "I;16", "LA"])
def test_read_mask_any_mode(tmp_path, mode):
    m = np.zeros((8, 12), np.uint8)
    m[2:6, 3:9] = 255
    img = Image.fromarray(m).convert(mode)
    mask = read_mask(save(img, tmp_path / "m.png"))
    np.testing.assert_array_equal(mask, m > 0)


def test_read_mask_resized_nearest(tmp_path):
    m = np.zeros((8, 12), np.uint8)
    m[:, 6:] = 255
    path = tmp_path / "m.png"
    path.write_bytes(png_bytes(m))
    mask = read_mask(path, shape=(16, 24))
    assert mask.shape == (16, 24) and mask.dtype == bool
    assert not mask[:, :12].any() and mask[:, 12:].all()


def test_read_mask_jpeg_noise_is_thresholded(tmp_path):
    m = np.zeros((32, 32), np.uint8)
    m[8:24, 8:24] = 255
    mask = read_mask(save(Image.fromarray(m), tmp_path / "m.jpg", quality=50))
    assert (mask != (m > 0)).mean() < 0.02


# --------------------------------------------------------------------------------------------
# the real data set


def test_real_dataset_decodes():
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data set not present at {REAL_DATA}")
    files = sorted(p for p in REAL_DATA.rglob("*") if p.is_file())
    assert len(files) > 1000

    def check(path: Path) -> str | None:
        reason = precheck(path, root=REAL_DATA)
        if reason is not None:
            return f"skipped: {reason}"
        image, info = decode(path)
        assert info.format in ("PNG", "JPEG") and max(image.shape) <= 4096
        return None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = dict(zip(files, pool.map(check, files)))
    skipped = {p.name: r for p, r in results.items() if r is not None}
    assert set(skipped) <= {"manifest.json"}, skipped
    assert len(results) - len(skipped) >= 1000

"""The single place where image files become arrays.

Every supported file (PNG, JPEG, BMP, TIFF, DICOM) is decoded to a 2-D float32 grayscale array in
[0, 1]. Anything that cannot be decoded raises :class:`ImageDecodeError` with a short reason meant
for a "skipped files" report; :func:`precheck` gives the reasons that need no decoding at all.
How a decoded image becomes the model's square is :mod:`xaicxr.io.resize`.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import (  # noqa: F401  (the plugin imports register the openers used below)
    BmpImagePlugin,
    ExifTags,
    Image,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
)

from .resize import resize

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_SUFFIXES",
    "ImageDecodeError",
    "ImageInfo",
    "precheck",
    "read_image",
    "read_mask",
]

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
)
DEFAULT_MAX_PIXELS: int = 100_000_000

_DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
_DICM_OFFSET = 128
_HEAD_BYTES = _DICM_OFFSET + 4
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
_DICOM_IMAGE_GROUPS = frozenset({0x0008, 0x0010, 0x0020, 0x0028, 0x7FE0})
"""Groups one of which any real DICOM image has; a forced read of non-DICOM bytes yields none."""
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as PIL's convert("L")
_MAX_DETAIL = 160


class ImageDecodeError(Exception):
    """A file could not be turned into an image array; ``str(e)`` is a short readable reason."""


@dataclass(frozen=True)
class ImageInfo:
    """What the file held: container format, pixel mode as found, and size after EXIF orientation.

    ``mode`` is PIL's mode (``'L'``, ``'I;16'``, ``'RGB'``, ...) or, for DICOM,
    ``'<PhotometricInterpretation>/<BitsStored>'`` such as ``'MONOCHROME2/16'``.
    """

    format: str
    mode: str
    width: int
    height: int


# --------------------------------------------------------------------------------------------
# precheck


def precheck(path: Path, *, root: Path | None = None) -> str | None:
    """Return a reason to skip ``path`` without decoding it, or None if it is worth decoding.

    Reasons: hidden file or folder, dangling symlink, not a regular file, empty file, unsupported
    suffix (files with any other suffix, or none, are accepted when they carry the DICOM 'DICM'
    preamble, since DICOM files are often named by UID). Never raises.

    Hidden components are looked for in the path as given, or only below ``root`` when ``root`` is
    given: pass the dataset root for absolute paths, or a dataset kept under e.g.
    ``~/.cache/kagglehub`` is skipped as a whole.
    """
    try:
        return _precheck(Path(path), root)
    except Exception as e:  # noqa: BLE001 - precheck must never raise
        return f"unreadable file: {_detail(e)}"


def _precheck(path: Path, root: Path | None) -> str | None:
    hidden = _hidden_component(path, root)
    if hidden is not None:
        return f"hidden file or folder: {hidden}"
    if path.is_symlink() and not path.exists():
        return "dangling symlink"
    try:
        st = path.stat()
    except FileNotFoundError:
        return "file not found"
    except OSError as e:
        return f"unreadable file: {_detail(e)}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file" + (" (directory)" if stat.S_ISDIR(st.st_mode) else "")
    if st.st_size == 0:
        return "empty file (0 bytes)"
    suffix = path.suffix.lower()
    if suffix in SUPPORTED_SUFFIXES:
        return None
    try:
        with path.open("rb") as fp:
            if _has_dicm_preamble(fp.read(_HEAD_BYTES)):
                return None
    except OSError as e:
        return f"unreadable file: {_detail(e)}"
    if suffix:
        return f"unsupported suffix: {suffix!r}"
    return "unsupported file type: no suffix and no DICOM preamble"


def _hidden_component(path: Path, root: Path | None) -> str | None:
    parts = path.parts
    if root is not None:
        try:
            parts = path.relative_to(root).parts
        except ValueError:
            parts = (path.name,)
    for part in parts:
        if part.startswith(".") and part not in (".", ".."):
            return part
    return None


def _has_dicm_preamble(head: bytes) -> bool:
    return head[_DICM_OFFSET:_HEAD_BYTES] == b"DICM"


# --------------------------------------------------------------------------------------------
# read_image


def read_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, ImageInfo]:
    """Decode a supported file to a 2-D float32 grayscale array in [0, 1] of shape (H, W).

    The container is recognised by content, not suffix (a suffix of ``.dcm``/``.dicom`` only allows
    DICOM without the 128-byte preamble). ``max_pixels`` bounds width * height and is checked
    before any pixel data is decoded. Raises :class:`ImageDecodeError` and nothing else.
    """
    path = Path(path)
    try:
        with _open_file(path) as fp:
            head = fp.read(_HEAD_BYTES)
            if not head:
                raise ImageDecodeError("empty file (0 bytes)")
            fp.seek(0)
            if _has_dicm_preamble(head) or path.suffix.lower() in _DICOM_SUFFIXES:
                image, info = _read_dicom(fp, max_pixels, force=not _has_dicm_preamble(head))
            else:
                image, info = _read_pil(fp, str(path), max_pixels)
        return _finish(image), info
    except ImageDecodeError:
        raise
    except MemoryError:
        raise ImageDecodeError("out of memory while decoding") from None
    except Exception as e:  # noqa: BLE001 - every failure becomes a reason
        raise ImageDecodeError(f"corrupt image: {_detail(e)}") from e


@contextmanager
def _open_file(path: Path) -> Iterator[IO[bytes]]:
    try:
        # O_NONBLOCK: opening a FIFO must not hang before fstat can refuse it.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        reason = "dangling symlink" if path.is_symlink() else "file not found"
        raise ImageDecodeError(reason) from None
    except IsADirectoryError:
        raise ImageDecodeError("not a regular file (directory)") from None
    except OSError as e:
        raise ImageDecodeError(f"unreadable file: {_detail(e)}") from None
    try:
        st_mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(st_mode):
            kind = " (directory)" if stat.S_ISDIR(st_mode) else ""
            raise ImageDecodeError(f"not a regular file{kind}")
        fp = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fp:
        yield fp


def _finish(image: np.ndarray) -> np.ndarray:
    """Make any decoded array a contiguous, finite float32 (H, W) array within [0, 1]."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ImageDecodeError(f"corrupt image: unexpected array shape {image.shape}")
    return np.ascontiguousarray(np.clip(_finite(image), 0.0, 1.0), dtype=np.float32)


def _finite(a: np.ndarray) -> np.ndarray:
    """Replace NaN and -inf by the smallest finite value and +inf by the largest (zeros if none)."""
    ok = np.isfinite(a)
    if ok.all():
        return a
    if not ok.any():
        return np.zeros_like(a)
    lo, hi = a[ok].min(), a[ok].max()
    return np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)


def _minmax(a: np.ndarray) -> np.ndarray:
    """Stretch to [0, 1]; a constant array becomes zeros."""
    a = _finite(np.asarray(a, dtype=np.float64))
    lo, hi = a.min(), a.max()
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32) @ _LUMA


def _detail(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else type(e).__name__
    return msg if len(msg) <= _MAX_DETAIL else msg[: _MAX_DETAIL - 3] + "..."


def _too_many(width: int, height: int, max_pixels: int) -> ImageDecodeError:
    return ImageDecodeError(
        f"too many pixels: {width}x{height} > {max_pixels} (decompression bomb guard)"
    )


# --------------------------------------------------------------------------------------------
# PIL formats


def _read_pil(fp: IO[bytes], filename: str, max_pixels: int) -> tuple[np.ndarray, ImageInfo]:
    img = _identify(fp, filename)
    width, height = img.size
    if width * height > max_pixels:
        raise _too_many(width, height, max_pixels)
    if width * height == 0:
        raise ImageDecodeError(f"corrupt image: zero-size image {width}x{height}")
    fmt = "JPEG" if img.format == "MPO" else (img.format or "?")
    mode = img.mode
    try:
        with _strict_truncation():
            img.load()
    except Image.DecompressionBombError:
        raise _too_many(width, height, max_pixels) from None
    except (OSError, EOFError, ValueError, SyntaxError) as e:
        raise _pil_load_error(e) from e
    img = _exif_oriented(img)
    gray = _pil_to_gray(img)
    return gray, ImageInfo(format=fmt, mode=mode, width=img.width, height=img.height)


def _identify(fp: IO[bytes], filename: str) -> ImageFile.ImageFile:
    """Open lazily with one of our PIL formats.

    The plugin openers are called directly instead of ``Image.open`` so that PIL's global
    ``MAX_IMAGE_PIXELS`` check (a warning, then an error at twice the limit) does not decide:
    ``max_pixels`` does, and no global state is touched.
    """
    prefix = fp.read(16)
    for fmt in _PIL_FORMATS:
        factory, accept = Image.OPEN[fmt]
        ok = accept(prefix) if accept is not None else True
        if not ok or isinstance(ok, str):
            continue
        fp.seek(0)
        try:
            return factory(fp, filename)
        except Image.DecompressionBombError as e:
            raise ImageDecodeError(f"too many pixels: {_detail(e)}") from None
        except (EOFError, OSError) as e:
            raise _pil_load_error(e) from e
        except Exception as e:  # noqa: BLE001 - SyntaxError, struct.error, ... from a bad header
            raise ImageDecodeError(f"corrupt image: {_detail(e)}") from e
    raise ImageDecodeError("not an image (not PNG, JPEG, BMP, TIFF or DICOM)")


def _pil_load_error(e: BaseException) -> ImageDecodeError:
    msg = str(e).lower()
    if isinstance(e, EOFError) or "truncated" in msg or "broken data stream" in msg:
        return ImageDecodeError("truncated image")
    return ImageDecodeError(f"corrupt image: {_detail(e)}")


_truncation_lock = threading.Lock()
_strict_readers = 0
_saved_load_truncated = False


@contextmanager
def _strict_truncation() -> Iterator[None]:
    """Keep ``ImageFile.LOAD_TRUNCATED_IMAGES`` False while we load, even if someone set it True.

    The flag is global; overlapping readers share one saved value, and the last one out restores
    it. Forcing it False can only make other code stricter for that moment, never laxer.
    """
    global _strict_readers, _saved_load_truncated
    with _truncation_lock:
        if _strict_readers == 0:
            _saved_load_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
        _strict_readers += 1
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        with _truncation_lock:
            _strict_readers -= 1
            if _strict_readers == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _saved_load_truncated


def _exif_oriented(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the image as stored."""
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001
        return img
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        ImageOps.exif_transpose(img, in_place=True)
    return img


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    """Grayscale in [0, 1], computed in float so 16-bit precision survives."""
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.float32)
    if mode in ("L", "LA", "La"):
        a = np.asarray(img)
        return (a if a.ndim == 2 else a[..., 0]).astype(np.float32) / 255.0
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.float32) / 65535.0
    if mode == "I":
        return _scale_int(np.asarray(img))
    if mode == "F":
        return _scale_float(np.asarray(img))
    if mode in ("RGB", "RGBA", "RGBX"):
        return _luma(np.asarray(img)) / 255.0
    try:
        rgb = img.convert("RGBA" if mode in ("P", "PA") else "RGB")
    except (ValueError, OSError):
        raise ImageDecodeError(f"unsupported image mode: {mode}") from None
    return _luma(np.asarray(rgb)) / 255.0


def _scale_int(a: np.ndarray) -> np.ndarray:
    """32-bit integers of unknown depth: 16-bit if they fit, else 31-bit; negatives min-max."""
    lo, hi = int(a.min()), int(a.max())
    if lo < 0:
        return _minmax(a)
    top = 65535.0 if hi <= 65535 else float(2**31 - 1)
    return (a.astype(np.float64) / top).astype(np.float32)


def _scale_float(a: np.ndarray) -> np.ndarray:
    a = _finite(a.astype(np.float32))
    if a.size and a.min() >= 0.0 and a.max() <= 1.0:
        return a
    return _minmax(a)


# --------------------------------------------------------------------------------------------
# DICOM


def _read_dicom(fp: IO[bytes], max_pixels: int, *, force: bool) -> tuple[np.ndarray, ImageInfo]:
    import pydicom

    try:
        ds = pydicom.dcmread(fp, force=force)
    except Exception as e:  # noqa: BLE001
        raise ImageDecodeError(f"unreadable DICOM: {_detail(e)}") from e
    if not any(tag.group in _DICOM_IMAGE_GROUPS for tag in ds.keys()):
        raise ImageDecodeError("unreadable DICOM: no DICOM data elements found (not a DICOM file?)")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageDecodeError("DICOM without pixel data")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        bits_stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    except Exception as e:  # noqa: BLE001
        raise ImageDecodeError(f"unreadable DICOM: {_detail(e)}") from e
    if rows * cols > max_pixels:
        raise _too_many(cols, rows, max_pixels)
    if rows * cols == 0:
        raise ImageDecodeError(f"unreadable DICOM: zero-size image {cols}x{rows}")
    _ensure_transfer_syntax(ds)
    raw = _dicom_first_frame(ds)
    try:
        gray = _dicom_to_gray(raw, ds, photometric, bits_stored)
    except ImageDecodeError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ImageDecodeError(f"unreadable DICOM: {_detail(e)}") from e
    info = ImageInfo(format="DICOM", mode=f"{photometric}/{bits_stored}", width=cols, height=rows)
    return gray, info


def _ensure_transfer_syntax(ds: Any) -> None:
    """Give a bare dataset (no file meta, as in ACR-NEMA style files) the encoding it was read with.

    pydicom needs a Transfer Syntax UID to decode pixels; for a dataset without file meta the
    encoding it detected while reading is the only (and a sufficient) answer for native pixel data.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return
    explicit = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    uid = ImplicitVRLittleEndian if implicit else explicit
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = uid


def _dicom_first_frame(ds: Any) -> np.ndarray:
    """Decode only the first frame; a missing decoder for a compressed syntax ends up here."""
    from pydicom.pixels import pixel_array

    try:
        arr = pixel_array(ds, index=0)
    except Exception as e:  # noqa: BLE001
        raise ImageDecodeError(f"unreadable DICOM: {_detail(e)}") from e
    samples = int(ds.get("SamplesPerPixel", 1))
    if arr.ndim == 3 and samples == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise ImageDecodeError(f"unreadable DICOM: unexpected pixel array shape {arr.shape}")
    return arr


def _dicom_to_gray(raw: np.ndarray, ds: Any, photometric: str, bits_stored: int) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(raw, ds)
        top = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else 1.0
        return _luma(rgb) / top
    if raw.ndim == 3:  # RGB, or YBR already converted to RGB by pydicom
        return _luma(raw) / float(2**bits_stored - 1)
    gray = _dicom_mono(raw, ds, bits_stored)
    return 1.0 - gray if photometric == "MONOCHROME1" else gray


def _dicom_mono(raw: np.ndarray, ds: Any, bits_stored: int) -> np.ndarray:
    """Modality LUT (rescale), then VOI LUT or window, else min-max over the data.

    A constant image keeps its place within the stored bit range instead of dividing by zero.
    """
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(raw, ds)
    shown = _dicom_voi_lut(values, ds)
    if shown is None:
        shown = _dicom_window(values, ds)
    if shown is not None:
        return shown
    flat = _finite(np.asarray(values, dtype=np.float64))
    if flat.max() > flat.min():
        return _minmax(flat)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo = -(2 ** (bits_stored - 1)) if signed else 0
    span = float(2**bits_stored - 1)
    return ((raw.astype(np.float64) - lo) / span).astype(np.float32)


def _dicom_voi_lut(values: np.ndarray, ds: Any) -> np.ndarray | None:
    """The first VOI LUT Sequence item, stretched to [0, 1]; None if absent or unusable."""
    if not ds.get("VOILUTSequence"):
        return None
    from pydicom.pixels import apply_voi

    try:
        nr_entries, first_map = _lut_range(ds.VOILUTSequence[0])
        iv = np.rint(_finite(values.astype(np.float64)))
        iv = np.clip(iv, first_map, first_map + nr_entries - 1)
        out = apply_voi(iv.astype(np.int64), ds)
    except Exception:  # noqa: BLE001 - fall back to the window or min-max
        return None
    return _minmax(out)


def _lut_range(item: Any) -> tuple[int, int]:
    """(number of entries, first mapped value) of a LUT item.

    Input values are clipped to this range up front because pydicom's LUT indexing stores
    ``value - first`` in the LUT's own unsigned dtype, where out-of-range values would wrap.
    """
    descriptor = item.LUTDescriptor
    return int(descriptor[0]) or 2**16, int(descriptor[1])


def _dicom_window(values: np.ndarray, ds: Any) -> np.ndarray | None:
    """Window center/width (PS3.3 C.11.2.1.2) mapped to [0, 1]; None if absent or invalid."""
    try:
        center = _first_number(ds.get("WindowCenter"))
        width = _first_number(ds.get("WindowWidth"))
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    except Exception:  # noqa: BLE001
        return None
    if center is None or width is None:
        return None
    x = _finite(np.asarray(values, dtype=np.float64))
    if function == "SIGMOID":
        if width <= 0:
            return None
        return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        if width <= 0:
            return None
    elif function == "LINEAR":
        if width < 1:
            return None
        center, width = center - 0.5, width - 1.0
    else:
        return None
    if width == 0:
        return (x > center).astype(np.float32)
    return np.clip((x - center) / width + 0.5, 0.0, 1.0).astype(np.float32)


def _first_number(value: Any) -> float | None:
    """The first value of a DICOM number that may be multi-valued (VM 1-n)."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, bytes, int, float)):
        values = list(value)
        if not values:
            return None
        value = values[0]
    number = float(value)
    return number if np.isfinite(number) else None


# --------------------------------------------------------------------------------------------
# masks


def read_mask(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask image (any mode) as bool (H, W); nearest-neighbour resized to ``shape`` if given.

    Foreground is every non-zero pixel, so 0/1, 0/255 and multi-label masks all work; for lossy
    JPEG masks it is every pixel above half the maximum. Raises :class:`ImageDecodeError`.
    """
    gray, info = read_image(path)
    if info.format == "JPEG":
        mask = gray > 0.5 * float(gray.max()) if gray.max() > 0 else np.zeros(gray.shape, bool)
    else:
        mask = gray > 0.0
    if shape is not None and tuple(shape) != mask.shape:
        (height, width), (mask_height, mask_width) = shape, mask.shape
        if abs(mask_width * height - width * mask_height) > max(width, height):  # aspect off by more than a pixel
            raise ImageDecodeError(f"mask {Path(path).name} is {mask_width} x {mask_height}, not the image's "
                                   f"{width} x {height} (nor a uniform scale of it)")
        mask = resize(mask.astype(np.float32), (int(shape[0]), int(shape[1])), "nearest") > 0.5
    return mask

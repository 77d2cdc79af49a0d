"""Real files for tests: a DICOM writer and a corpus of bad (and oddly named but good) inputs.

Other test modules import :func:`write_dicom` and :func:`build_bad_corpus`; keep their signatures.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage, For Presentation

_DTYPES = {(8, 0): np.uint8, (8, 1): np.int8, (16, 0): np.uint16, (16, 1): np.int16}


def write_dicom(
    path: Path,
    array: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits: int = 16,
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    pixel_representation: int = 0,
) -> Path:
    """Write ``array`` as a real DICOM Part 10 file (Explicit VR Little Endian, DX).

    ``array`` is (H, W), or (frames, H, W) for a multi-frame file; with ``photometric='RGB'`` it is
    (H, W, 3) 8-bit. ``bits`` is Bits Stored (Bits Allocated is 8 or 16). ``window`` is
    ``(center, width)``. Rescale Slope/Intercept are written only when not the identity.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = np.asarray(array)
    colour = photometric in ("RGB", "YBR_FULL")
    frames = arr.shape[0] if arr.ndim == 3 and not colour else None
    rows, cols = (arr.shape[1:3] if frames else arr.shape[:2])
    allocated = 8 if bits <= 8 else 16
    dtype = _DTYPES[(allocated, pixel_representation)]

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientID = "TEST"
    ds.Rows, ds.Columns = int(rows), int(cols)
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    if frames:
        ds.NumberOfFrames = int(frames)
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = allocated
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = pixel_representation
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope = f"{slope:.8g}"
        ds.RescaleIntercept = f"{intercept:.8g}"
    if window is not None:
        ds.WindowCenter = f"{window[0]:.8g}"
        ds.WindowWidth = f"{window[1]:.8g}"
    ds.PixelData = np.ascontiguousarray(arr.astype(dtype)).tobytes()
    ds["PixelData"].VR = "OB" if allocated == 8 else "OW"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def png_bytes(array: np.ndarray) -> bytes:
    """A PNG of ``array`` (uint8 -> L, uint16 -> I;16, (H, W, 3) -> RGB)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array)).save(buf, "PNG")
    return buf.getvalue()


@lru_cache(maxsize=4)
def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A real, fully valid 1-bit PNG of ``width`` x ``height`` zeros, about 110 kB for 30000x30000.

    Written by hand because PIL would need about a byte per pixel in memory to make it.
    """
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    block, per_block = row * 100, 100
    parts = [compressor.compress(block) for _ in range(height // per_block)]
    parts.append(compressor.compress(row * (height % per_block)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _gradient(height: int = 32, width: int = 48) -> np.ndarray:
    return np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))


def _noise(size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_bad_corpus(root: Path, classes: Sequence[str] = ("a", "b")) -> dict[str, str]:
    """Write a two-class folder tree of valid, bad and oddly named inputs under ``root``.

    Returns ``{relative posix path: expected reason keyword}``; a keyword of ``''`` means the file
    is valid and must load (not be skipped). The reason for a bad file comes either from
    ``precheck`` or from ``read_image`` raising ``ImageDecodeError``. Entries the filesystem
    refuses (symlinks, a newline in a name) are left out of the mapping.
    """
    root = Path(root)
    a, b = classes[0], classes[1]
    expected: dict[str, str] = {}

    def put(rel: str, data: bytes, keyword: str) -> None:
        _write(root / rel, data)
        expected[rel] = keyword

    good = png_bytes(_gradient())
    put(f"{a}/valid.png", good, "")
    put(f"{b}/valid.png", good, "")

    noise_png, noise_jpg = _encoded(_noise(), "PNG"), _encoded(_noise(), "JPEG")
    put(f"{a}/empty.png", b"", "empty")
    put(f"{a}/truncated.png", noise_png[: len(noise_png) // 2], "truncated")
    put(f"{a}/truncated.jpg", noise_jpg[: len(noise_jpg) // 2], "truncated")
    put(f"{a}/not_an_image.png", b"this is a text file, not a PNG\n", "not an image")
    put(f"{a}/png_header_garbage.png", noise_png[:8] + os.urandom(200), "corrupt")
    put(f"{a}/bomb.png", bomb_png(), "too many pixels")
    put(f"{a}/text.dcm", b"patient notes, not DICOM\n" * 20, "DICOM")

    no_pixels = root / a / "no_pixels.dcm"
    write_dicom(no_pixels, np.zeros((4, 4), np.uint16))
    _strip_pixel_data(no_pixels)
    expected[f"{a}/no_pixels.dcm"] = "DICOM"

    if _try_symlink(root / a / "dangling.png", root / a / "does_not_exist.png"):
        expected[f"{a}/dangling.png"] = "symlink"

    put(f"{a}/.hidden.png", good, "hidden")
    put(f"{a}/.cache/x.png", good, "hidden")
    put(f"{b}/notes.txt", b"notes\n", "unsupported")

    put(f"{b}/röntgen bild (1).png", good, "")
    write_dicom(root / b / "valid.dcm", (_gradient().astype(np.uint16) * 16))
    expected[f"{b}/valid.dcm"] = ""
    write_dicom(root / b / "1.2.840.99999.1", (_gradient().astype(np.uint16) * 16))
    expected[f"{b}/1.2.840.99999.1"] = ""  # DICOM named by UID: no known suffix, DICM preamble
    try:
        put(f"{b}/new\nline.png", good, "")
    except OSError:
        pass
    return expected


def _strip_pixel_data(path: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)


def _try_symlink(link: Path, target: Path) -> bool:
    try:
        link.symlink_to(target)
    except (OSError, NotImplementedError):
        return False
    return True

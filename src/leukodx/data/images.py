"""Safe image reading: allowlisted formats, decompression-bomb guard, size limits, mode conversion."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFont, UnidentifiedImageError

from leukodx.errors import ImageError

ImageInput = np.ndarray | Image.Image | bytes | str | Path  # what the analysis accepts as one field

ALLOWED_FORMATS = {"JPEG", "PNG", "TIFF", "BMP", "MPO"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
MIN_SIDE = 32
MAX_PIXELS = 64_000_000  # 64 MP: a large whole-field microscope photo still fits; bombs do not
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def is_image_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _to_rgb(img: Image.Image) -> Image.Image:
    """Greyscale, palette, RGBA, CMYK and 16-bit images to 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        scale = 255.0 / (65535.0 if hi > 255 else max(hi, 1.0))
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        img = Image.fromarray(((arr - lo) / max(hi - lo, 1e-9) * 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def open_image(source: str | Path | bytes, name: str | None = None, *, min_side: int = MIN_SIDE) -> Image.Image:
    """Open an image (a path, or the raw bytes of an upload: then `name` is used in messages) as 8-bit RGB, or
    raise ImageError naming the file and the reason."""
    label = name or (str(source) if not isinstance(source, bytes) else "upload")
    try:
        if isinstance(source, bytes):
            if not source:
                raise ImageError(label, "the file is empty (0 bytes)", "Upload the image again.")
            fp: io.BytesIO | str = io.BytesIO(source)
        else:
            p = Path(source)
            if not p.exists():
                raise ImageError(label, "no such file", "Check the path.")
            if p.is_dir():
                raise ImageError(label, "is a folder, not an image", "Give an image file.")
            if p.stat().st_size == 0:
                raise ImageError(label, "the file is empty (0 bytes)", "Replace it with the original image.")
            fp = str(p)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                if img.format not in ALLOWED_FORMATS:
                    raise ImageError(label, f"format {img.format} is not accepted", "Use JPEG, PNG, TIFF or BMP.")
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageError(label, f"image is {w}x{h} = {w * h / 1e6:.0f} MP, over the "
                                     f"{MAX_PIXELS / 1e6:.0f} MP limit", "Downscale it, or crop the field of interest.")
                if min(w, h) < min_side:
                    raise ImageError(label, f"image is {w}x{h}, smaller than the {min_side} px minimum side",
                                     "Use the full microscope field, not a thumbnail.")
                img.load()
                return _to_rgb(img)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(label, f"looks like a decompression bomb ({exc.__class__.__name__})",
                         f"Images over {MAX_PIXELS / 1e6:.0f} MP are refused; downscale it first.") from None
    except UnidentifiedImageError:
        raise ImageError(label, "not an image (cannot identify the format)",
                         "Use JPEG, PNG, TIFF or BMP files.") from None
    except OSError as exc:
        text = str(exc)
        if "truncated" in text.lower() or "broken data stream" in text.lower():
            raise ImageError(label, "the image is truncated", "Copy or export the image again.") from None
        raise ImageError(label, f"cannot be read ({text})", "Check the file, or export it again.") from None
    except (ValueError, SyntaxError) as exc:
        raise ImageError(label, f"cannot be decoded ({exc})", "Export the image again as JPEG or PNG.") from None


def read_rgb(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """An image as an HxWx3 uint8 array (see `open_image`)."""
    return np.asarray(open_image(source, name))


def read_reference_mask(path: str | Path, threshold: int = 128, size: tuple[int, int] | None = None,
                        warn: bool = True) -> np.ndarray:
    """The study's reference mask: grayscale(Segmented image) > threshold, as a bool HxW array. When `size`
    (W, H) is given and differs, the mask is resized (nearest) and, with `warn`, a MaskSizeWarning is issued
    (callers in worker threads pass warn=False and compare sizes themselves: warning capture is not
    thread-safe)."""
    img = open_image(path).convert("L")
    if size is not None and img.size != size:
        if warn:
            warnings.warn(f"{path}: mask is {img.size[0]}x{img.size[1]} but its image is "
                          f"{size[0]}x{size[1]}; the mask was resized (nearest neighbour) to match.",
                          MaskSizeWarning, stacklevel=2)
        img = img.resize(size, Image.Resampling.NEAREST)
    return np.asarray(img) > threshold


class MaskSizeWarning(UserWarning):
    """A reference mask whose size differs from its image (it is resized to match)."""


def array_to_rgb(arr: np.ndarray, name: str = "array") -> Image.Image:
    """An in-memory image (HxW, HxWx3 or HxWx4; uint8, uint16 or float) as an 8-bit RGB PIL image."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageError(name, f"array of shape {a.shape} is not an image", "Give HxW, HxWx3 or HxWx4 pixels.")
    h, w = a.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(name, f"image is {w}x{h}, smaller than the {MIN_SIDE} px minimum side",
                         "Use the full microscope field, not a thumbnail.")
    if h * w > MAX_PIXELS:
        raise ImageError(name, f"image is {w}x{h}, over the {MAX_PIXELS / 1e6:.0f} MP limit", "Downscale it first.")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        if a.ndim == 2:
            return _to_rgb(Image.fromarray(a))
        a = (a.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer):
        af = a.astype(np.float32)
        if not np.isfinite(af).all():
            raise ImageError(name, "array holds NaN or infinite values", "Give pixel values.")
        scale = 255.0 if np.issubdtype(a.dtype, np.floating) and af.max(initial=0) <= 1.0 else 1.0
        a = np.clip(af * scale, 0, 255).round().astype(np.uint8)
    else:
        raise ImageError(name, f"array of type {a.dtype} is not an image", "Give uint8, uint16 or float pixels.")
    mode = "L" if a.ndim == 2 else ("RGB" if a.shape[2] == 3 else "RGBA")
    return _to_rgb(Image.fromarray(np.ascontiguousarray(a), mode=mode))


def image_reason(exc: ImageError) -> str:
    """What is wrong with an image and what to do, without the file name (the row already has it)."""
    return f"{exc.reason}. {exc.hint}".strip() if exc.hint else exc.reason


def read_field(image: ImageInput, name: str | None = None) -> np.ndarray:
    """Any accepted input as HxWx3 uint8 RGB; raises ImageError with the reason."""
    if isinstance(image, np.ndarray):
        return np.asarray(array_to_rgb(image, name or "array"))
    if isinstance(image, Image.Image):
        try:
            pixels = np.asarray(image)  # an image opened lazily is decoded here
        except OSError as exc:  # e.g. a truncated file
            raise ImageError(name or "image", f"cannot be read ({exc.strerror or exc})",
                             "Check the file, or export it again.") from None
        return np.asarray(array_to_rgb(pixels, name or "image"))
    if isinstance(image, bytes | bytearray):
        return np.asarray(open_image(bytes(image), name or "upload"))
    return np.asarray(open_image(Path(image), name))


def font(size: int):
    """Pillow's default font (Aileron Regular) at `size` px."""
    return ImageFont.load_default(size=size)

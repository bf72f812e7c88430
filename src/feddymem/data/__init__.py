"""Data: reading images and masks, scanning data-set layouts, batching for the detectors."""

from feddymem.data.elpv import ELPV_FOLDERS, ElpvExportSummary, export_elpv
from feddymem.data.images import (
    DataError,
    DecodedImage,
    ImageReadError,
    MaskSizeError,
    decode_image,
    read_image,
    read_image_size,
    read_mask,
)
from feddymem.data.layouts import (
    IMAGE_EXTENSIONS,
    Sample,
    Split,
    scan,
    scan_folder,
    scan_mvtec,
)
from feddymem.data.loader import Batch, LoadReport, iter_batches, load_all
from feddymem.data.sizing import resolve_size

__all__ = [
    "ELPV_FOLDERS",
    "IMAGE_EXTENSIONS",
    "Batch",
    "DataError",
    "DecodedImage",
    "ElpvExportSummary",
    "ImageReadError",
    "LoadReport",
    "MaskSizeError",
    "Sample",
    "Split",
    "decode_image",
    "export_elpv",
    "iter_batches",
    "load_all",
    "read_image",
    "read_image_size",
    "read_mask",
    "resolve_size",
    "scan",
    "scan_folder",
    "scan_mvtec",
]

"""Memories compressed on the wire by faiss: product quantisation (`wire_dtype = "pq"`) and
scalar quantisation to 8 or 4 bits a value (`"sq8"`, `"sq4"`).

Product quantisation. A memory of N vectors of length d travels as a codebook and one code per vector: the vectors,
zero-padded to M = ceil(d / subdim) sub-vectors of `subdim` values, each sub-vector replaced by
the index of its nearest of 2**bits centres (faiss's `ProductQuantizer`, k-means per sub-space).
The codebook goes as float16 (M, 2**bits, subdim); the codes as faiss packs them, uint8
(N, ceil(M * bits / 8)). Bytes: N * ceil(M * bits / 8) + M * 2**bits * subdim * 2.

The defaults (subdim 4, bits 6) were set by that arithmetic before any accuracy was measured:
at d = 152 a 2,048-item memory is 58 KB of codes and a 19 KB codebook, within the 95 KB that
FedAvg sends per round for the generator alone, with twice the float32 memory's items.

Scalar quantisation (faiss's `ScalarQuantizer`, QT_8bit / QT_4bit, ranges from each
dimension's minimum and maximum): every value becomes one of 2**bits steps between its
dimension's minimum and maximum. The ranges go as float32 (2, d); the codes as uint8
(N, ceil(d * bits / 8)). sq4 keeps every item of the float32 memory at an eighth of its bytes:
1,024 items of d = 152 are 78 KB, within FedAvg's 95 KB.

Decoding is the receiver's: it accepts only the shapes its own settings imply (`decode` checks
them before faiss reads a byte), and the decoded vectors then meet the same numeric checks as
any other upload (`limits.validate_memory`).
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from feddymem.method.kmeans import faiss_seed

__all__ = [
    "SQ_BITS",
    "CodeError",
    "code_size",
    "decode",
    "encode",
    "encoded_bytes",
    "sq_bytes",
    "sq_decode",
    "sq_encode",
    "sub_vectors",
]

SQ_BITS = {"sq8": 8, "sq4": 4}
"""The scalar-quantised wire dtypes and their bits a value."""
_SQ_TYPES = {8: faiss.ScalarQuantizer.QT_8bit, 4: faiss.ScalarQuantizer.QT_4bit}


class CodeError(ValueError):
    """Codes, a codebook or ranges that do not fit the receiver's settings."""


def sub_vectors(dim: int, subdim: int) -> int:
    """M, the number of sub-vectors of a length-`dim` vector cut into `subdim` values."""
    return math.ceil(dim / subdim)


def code_size(dim: int, subdim: int, bits: int) -> int:
    """Bytes of one vector's code."""
    return math.ceil(sub_vectors(dim, subdim) * bits / 8)


def encoded_bytes(items: int, dim: int, *, subdim: int, bits: int) -> int:
    """Bytes of `items` coded vectors and their codebook (array payloads, no headers)."""
    m = sub_vectors(dim, subdim)
    return items * code_size(dim, subdim, bits) + m * 2**bits * subdim * 2


def _padded(vectors: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((vectors.shape[0], width), dtype=np.float32)
    out[:, : vectors.shape[1]] = vectors
    return out


def encode(
    vectors: np.ndarray, *, subdim: int, bits: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 (N, code_size), codebook float16 (M, 2**b, subdim)) of `vectors` (N, d).

    b = bits, or fewer when N < 2**bits (k-means needs a point per centre). The codes are
    computed against the float16 codebook as sent, so the receiver decodes what was chosen.
    Seeded.
    """
    n, dim = vectors.shape
    if n < 1:
        raise CodeError("cannot code an empty memory")
    b = min(bits, max(1, max(n, 2).bit_length() - 1))  # 2**b <= n
    m = sub_vectors(dim, subdim)
    x = _padded(np.ascontiguousarray(vectors, dtype=np.float32), m * subdim)
    train = x if n >= 2**b else np.concatenate([x, x])  # a single vector: two equal points
    pq = faiss.ProductQuantizer(m * subdim, m, b)
    pq.cp.seed = faiss_seed(seed)
    pq.cp.min_points_per_centroid = 1  # small memories are expected here, not a mistake
    pq.verbose = False
    pq.train(train)
    codebook = faiss.vector_to_array(pq.centroids).astype(np.float16).reshape(m, 2**b, subdim)
    faiss.copy_array_to_vector(codebook.astype(np.float32).ravel(), pq.centroids)
    codes = pq.compute_codes(x)
    return np.ascontiguousarray(codes, dtype=np.uint8), codebook


def decode(
    codes: np.ndarray, codebook: np.ndarray, *, dim: int, subdim: int, max_bits: int
) -> np.ndarray:
    """The float32 vectors (N, dim) of `codes` under `codebook`, once both have the shapes
    the receiver's settings (dim, subdim, at most max_bits) imply; CodeError names the first
    mismatch."""
    m = sub_vectors(dim, subdim)
    if codebook.dtype != np.float16 or codebook.ndim != 3:
        raise CodeError(f"codebook must be 3-D float16, got {codebook.dtype} {codebook.shape}")
    cm, ksub, csub = codebook.shape
    b = int(ksub).bit_length() - 1
    if (cm, csub) != (m, subdim) or ksub != 2**b or not 1 <= b <= max_bits:
        raise CodeError(
            f"codebook shape {codebook.shape}, expected ({m}, 2**b, {subdim}) with "
            f"1 <= b <= {max_bits}"
        )
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != code_size(dim, subdim, b):
        raise CodeError(
            f"codes must be uint8 (N, {code_size(dim, subdim, b)}), got {codes.dtype} {codes.shape}"
        )
    if codes.shape[0] < 1:
        raise CodeError("no codes")
    pq = faiss.ProductQuantizer(m * subdim, m, b)
    faiss.copy_array_to_vector(codebook.astype(np.float32).ravel(), pq.centroids)
    # faiss's Python layer takes and returns numpy here; its stubs show the C signature
    out: np.ndarray = pq.decode(np.ascontiguousarray(codes))  # type: ignore[call-arg,func-returns-value,assignment]
    return np.ascontiguousarray(out[:, :dim], dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# scalar quantisation


def sq_bytes(items: int, dim: int, *, bits: int) -> int:
    """Bytes of `items` scalar-quantised vectors and their ranges (array payloads)."""
    return items * math.ceil(dim * bits / 8) + 2 * dim * 4


def sq_encode(vectors: np.ndarray, *, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 (N, ceil(d * bits / 8)), ranges float32 (2, d): each dimension's minimum
    and span) of `vectors` (N, d)."""
    n, dim = vectors.shape
    if n < 1:
        raise CodeError("cannot code an empty memory")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    sq = faiss.ScalarQuantizer(dim, _SQ_TYPES[bits])
    sq.train(x)
    ranges = faiss.vector_to_array(sq.trained).astype(np.float32).reshape(2, dim)
    codes = sq.compute_codes(x)
    return np.ascontiguousarray(codes, dtype=np.uint8), ranges


def sq_decode(codes: np.ndarray, ranges: np.ndarray, *, dim: int, bits: int) -> np.ndarray:
    """The float32 vectors (N, dim) of scalar-quantised `codes` under `ranges`, once both have
    the shapes the receiver's settings imply; CodeError names the first mismatch."""
    if ranges.dtype != np.float32 or ranges.shape != (2, dim):
        raise CodeError(f"ranges must be float32 (2, {dim}), got {ranges.dtype} {ranges.shape}")
    width = math.ceil(dim * bits / 8)
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != width:
        raise CodeError(f"codes must be uint8 (N, {width}), got {codes.dtype} {codes.shape}")
    if codes.shape[0] < 1:
        raise CodeError("no codes")
    sq = faiss.ScalarQuantizer(dim, _SQ_TYPES[bits])
    faiss.copy_array_to_vector(np.ascontiguousarray(ranges).ravel(), sq.trained)
    out: np.ndarray = sq.decode(np.ascontiguousarray(codes))
    return np.ascontiguousarray(out, dtype=np.float32)

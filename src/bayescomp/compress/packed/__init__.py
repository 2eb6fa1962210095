"""A compact bit-packed file for compressed plain models, whose size on disk reflects the bit widths.

A ``torch.save`` file stores every weight as float32, so quantising a layer to 4 bits (or pruning 99 % of
its single weights) would not make the file any smaller. This format stores each quantised Linear/Conv2d
weight as integer grid codes packed at the fewest bits that hold them, and a mostly-zero weight as positions
plus values, so the file size is (almost) the bit accounting of the papers (Louizos et al. 2017, Sec. 5).
Nothing is unpickled: the file is a JSON header plus raw blobs, checked by a CRC-32.

The format is specified in docs/file-format.md. The package is split by concern:

* :mod:`~bayescomp.compress.packed.format`: constants, :class:`PackedFormatError`, :class:`QuantSpec`;
* :mod:`~bayescomp.compress.packed.bits`: bit packing and fixed-point codes;
* :mod:`~bayescomp.compress.packed.weights` and :mod:`~bayescomp.compress.packed.sparse`: the weight
  encodings, each encoder beside its decoder;
* :mod:`~bayescomp.compress.packed.modules`: the module codec table (one entry per supported leaf type);
* :mod:`~bayescomp.compress.packed.container`: framing, CRC and the atomic writer;
* :mod:`~bayescomp.compress.packed.tree`: networks that are not a flat Sequential;
* :mod:`~bayescomp.compress.packed.generic`: modules outside the table, stored with their own tensors;
* :mod:`~bayescomp.compress.packed.classes`: the allowlist of container classes a file may rebuild;
* :mod:`~bayescomp.compress.packed.files`: :func:`save_packed` / :func:`load_packed`;
* :mod:`~bayescomp.compress.packed.inspection`: per-layer bits and encodings without building the model.
"""

from __future__ import annotations

from bayescomp.compress.packed.bits import (
    bits_needed, dequantize_codes, pack_uint, quantize_codes, unpack_uint,
)
from bayescomp.compress.packed.classes import (
    BUILTIN_CLASSES, UntrustedClassError, container_classes, register_packable, unregister_packable,
)
from bayescomp.compress.packed.files import load_packed, save_packed
from bayescomp.compress.packed.format import (
    ENCODINGS, FORMAT_VERSION, MAGIC, READABLE_VERSIONS, RESERVED_KEY, TENSOR_VERSION, TREE_VERSION,
    PackedFormatError, QuantSpec,
)
from bayescomp.compress.packed.inspection import packed_layer_bits, packed_layer_info
from bayescomp.compress.packed.modules import SUPPORTED_TYPES
from bayescomp.compress.packed.tree import is_flat, packed_leaves
from bayescomp.compress.packed.weights import sparse_weight_bytes

__all__ = [
    "BUILTIN_CLASSES", "ENCODINGS", "FORMAT_VERSION", "MAGIC", "READABLE_VERSIONS", "RESERVED_KEY",
    "SUPPORTED_TYPES", "TENSOR_VERSION", "TREE_VERSION", "PackedFormatError", "QuantSpec",
    "UntrustedClassError", "bits_needed",
    "container_classes", "dequantize_codes", "is_flat", "load_packed", "pack_uint", "packed_layer_bits",
    "packed_layer_info", "packed_leaves", "quantize_codes", "register_packable", "save_packed",
    "sparse_weight_bytes", "unpack_uint", "unregister_packable",
]

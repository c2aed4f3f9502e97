"""Tensor codecs (numpy only): pruning masks, relative index, k-means codebooks, canonical Huffman."""
from dcm.encoder.codec import CsrParts, decode_parts, decode_tensor, encode_raw, encode_tensor, matrix_shape
from dcm.encoder.kmeans import kmeans_1d
from dcm.encoder.prune import mask_by_quality, mask_by_sparsity

__all__ = ["CsrParts", "decode_parts", "decode_tensor", "encode_raw", "encode_tensor", "matrix_shape",
           "kmeans_1d", "mask_by_quality", "mask_by_sparsity"]

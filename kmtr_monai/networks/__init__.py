"""Networks: tokenizers, ViT encoder/decoder, image and k-space masked autoencoders (Stage I, DESIGN §1, §4) and the
Stage III task models, heads and dense decoders."""

from .dense_decoders import ImageQueryDecoder, TokenGridUNETRDecoder, TokenUnpatchify, evenly_spaced_layers
from .downstream import INITS, TaskModel, build_kspace_encoder
from .heads import DiseaseClassifier, LinearProbeHead, PhenotypeRegressor, TemporalMLPHead
from .mae import MODEL_PRESETS, ImageMAE, KspaceMAE, build_image_mae, build_kspace_mae, pool_tokens
from .pos_embed import grid_positions, lax_flag, position_code, sincos_1d, sincos_code, split_dims
from .tokenizers import (
    ImageTokenizer,
    KspaceHybridTokenizer,
    KspaceLineTokenizer,
    KspacePatchTokenizer,
    HybridTokens,
    LineTokens,
    patchify,
    unpatchify,
)
from .transformer import Block, TransformerEncoder

__all__ = [
    "MODEL_PRESETS",
    "ImageMAE",
    "KspaceMAE",
    "build_image_mae",
    "build_kspace_mae",
    "pool_tokens",
    "grid_positions",
    "lax_flag",
    "position_code",
    "sincos_1d",
    "sincos_code",
    "split_dims",
    "ImageTokenizer",
    "KspaceHybridTokenizer",
    "KspaceLineTokenizer",
    "KspacePatchTokenizer",
    "HybridTokens",
    "LineTokens",
    "patchify",
    "unpatchify",
    "Block",
    "TransformerEncoder",
    # Stage III
    "INITS",
    "TaskModel",
    "build_kspace_encoder",
    "TemporalMLPHead",
    "LinearProbeHead",
    "PhenotypeRegressor",
    "DiseaseClassifier",
    "TokenGridUNETRDecoder",
    "ImageQueryDecoder",
    "TokenUnpatchify",
    "evenly_spaced_layers",
]

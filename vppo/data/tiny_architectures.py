"""The tiny builds' architectures: one config builder per model family (the real transformers architecture at
any width), over shared text and vision halves, so that one width table of :mod:`vppo.data.tiny_models` serves
every family. Every builder takes the same keywords; ``window_size`` has no Qwen3-VL meaning (its vision tower
attends globally).
"""

from __future__ import annotations

from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen3VLConfig,
                          Qwen3VLForConditionalGeneration)

from vppo.model_families import QWEN2_5_VL, QWEN3_VL, ModelFamily

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def _mrope_section(head_dim: int) -> list[int]:
    """M-RoPE sections (temporal, height, width): they must sum to head_dim / 2."""
    half = head_dim // 2
    return [half - 2 * (half // 3), half // 3, half // 3]


def _text_config(ids: dict, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int,
                 intermediate_size: int | None, rope_theta: float, max_position_embeddings: int,
                 **extra) -> dict:
    head_dim = hidden_size // num_heads
    rope = {"rope_type": "default", "rope_theta": rope_theta, "mrope_section": _mrope_section(head_dim)}
    return dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        **({"head_dim": head_dim} if extra.pop("explicit_head_dim", False) else {}),
        intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={**rope, **extra.pop("rope", {})},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def _vision_config(family: ModelFamily, vision_depth: int, vision_hidden: int, vision_mlp: int, vision_heads: int,
                   hidden_size: int, **extra) -> dict:
    return dict(
        depth=vision_depth,
        hidden_size=vision_hidden,
        intermediate_size=vision_mlp,
        num_heads=vision_heads,
        out_hidden_size=hidden_size,
        patch_size=family.patch_size,
        spatial_merge_size=family.merge_size,
        temporal_patch_size=family.temporal_patch_size,
        **extra,
    )


def _vision_token_ids(ids: dict) -> dict:
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                tie_word_embeddings=False)


def build_qwen25vl_config(tokenizer, hidden_size: int = 64, num_layers: int = 2, vision_depth: int = 2, *,
                          num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int | None = None,
                          vocab_size: int | None = None, vision_hidden: int = 32, vision_mlp: int = 64,
                          vision_heads: int = 2, rope_theta: float = 10000.0, max_position_embeddings: int = 4096,
                          window_size: int = 56) -> Qwen2_5_VLConfig:
    """The real Qwen2.5-VL architecture at any width (defaults: the tiny test model; the bench widens it)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = _text_config(ids, vocab_size or len(tokenizer), hidden_size, num_layers, num_heads, num_kv_heads,
                        intermediate_size, rope_theta, max_position_embeddings)
    vision = _vision_config(QWEN2_5_VL, vision_depth, vision_hidden, vision_mlp, vision_heads, hidden_size,
                            window_size=window_size, fullatt_block_indexes=[vision_depth - 1])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_vision_token_ids(ids))


def build_qwen3vl_config(tokenizer, hidden_size: int = 64, num_layers: int = 2, vision_depth: int = 2, *,
                         num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int | None = None,
                         vocab_size: int | None = None, vision_hidden: int = 32, vision_mlp: int = 64,
                         vision_heads: int = 2, rope_theta: float = 10000.0, max_position_embeddings: int = 4096,
                         window_size: int | None = None) -> Qwen3VLConfig:
    """The real Qwen3-VL architecture (16 px patches, DeepStack, interleaved M-RoPE, q/k norms) at any width."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = _text_config(ids, vocab_size or len(tokenizer), hidden_size, num_layers, num_heads, num_kv_heads,
                        intermediate_size, rope_theta, max_position_embeddings, explicit_head_dim=True,
                        rope={"mrope_interleaved": True})
    vision = _vision_config(QWEN3_VL, vision_depth, vision_hidden, vision_mlp, vision_heads, hidden_size,
                            num_position_embeddings=64,  # an 8x8 grid of learned positions, interpolated per image
                            deepstack_visual_indexes=[0])  # the first block's features also feed decoder layer 1
    return Qwen3VLConfig(text_config=text, vision_config=vision, **_vision_token_ids(ids))


#: Family key -> (config builder, model class) of its tiny build.
CONFIG_BUILDERS = {
    QWEN2_5_VL.key: (build_qwen25vl_config, Qwen2_5_VLForConditionalGeneration),
    QWEN3_VL.key: (build_qwen3vl_config, Qwen3VLForConditionalGeneration),
}

"""The tiny Qwen3-VL config: the real architecture (16 px patches, DeepStack, interleaved M-RoPE, q/k norms) at
the tiny widths of :mod:`vppo.data.tiny_models`, which builds, saves and warm-starts it like the Qwen2.5-VL one.

The keywords are :func:`vppo.data.tiny_models.build_config`'s, so one width table serves both families
(``window_size`` has no Qwen3-VL meaning: its vision tower attends globally).
"""

from __future__ import annotations

from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from vppo.model_families import QWEN3_VL


def build_qwen3vl_config(tokenizer, hidden_size: int = 64, num_layers: int = 2, vision_depth: int = 2, *,
                         num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int | None = None,
                         vocab_size: int | None = None, vision_hidden: int = 32, vision_mlp: int = 64,
                         vision_heads: int = 2, rope_theta: float = 10000.0, max_position_embeddings: int = 4096,
                         window_size: int | None = None) -> Qwen3VLConfig:
    """The real Qwen3-VL architecture at any width (defaults: the tiny test model)."""
    from vppo.data.tiny_models import SPECIAL_TOKENS

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = hidden_size // num_heads
    half = head_dim // 2  # interleaved mrope sections (temporal, height, width) must sum to head_dim / 2
    mrope_section = [half - 2 * (half // 3), half // 3, half // 3]
    text_config = dict(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        head_dim=head_dim,
        intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope_section,
                         "mrope_interleaved": True},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision_config = dict(
        depth=vision_depth,
        hidden_size=vision_hidden,
        intermediate_size=vision_mlp,
        num_heads=vision_heads,
        out_hidden_size=hidden_size,
        patch_size=QWEN3_VL.patch_size,
        spatial_merge_size=QWEN3_VL.merge_size,
        temporal_patch_size=QWEN3_VL.temporal_patch_size,
        num_position_embeddings=64,  # an 8x8 grid of learned positions, interpolated to each image's grid
        deepstack_visual_indexes=[0],  # the first block's features also feed the first decoder layer
    )
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


#: Family key -> (config builder, model class) for :func:`vppo.data.tiny_models.family_builders`.
TINY_BUILDERS = {QWEN3_VL.key: (build_qwen3vl_config, Qwen3VLForConditionalGeneration)}

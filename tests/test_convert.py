"""``vppo convert``: HF and FSDP-sharded trainer outputs become the same verified safetensors checkpoint; a
finished output is never overwritten; missing or partial inputs fail with a message naming the piece."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from vppo.modeling import CheckpointError, load_policy, load_processor
from vppo.training.convert import MARKER, convert, fixed_logits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A trainer-style output: an HF dir with weights that differ from the base model."""
    out = tmp_path_factory.mktemp("trained") / "final"
    model = load_policy(tiny_model_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    model.save_pretrained(out)
    processor = load_processor(tiny_model_dir)
    processor.save_pretrained(out)
    processor.tokenizer.save_pretrained(out)
    return out, model


@pytest.fixture(scope="module")
def converted(trained, tmp_path_factory):
    source, _ = trained
    out = tmp_path_factory.mktemp("converted") / "hf"
    return out, convert(source, out)


def test_hf_round_trip_reloads_with_identical_logits(trained, converted):
    (source, model), (out, record) = trained, converted
    assert json.loads((out / MARKER).read_text()) == record
    assert record["source_format"] == "hf" and record["max_logit_diff"] == 0.0 and len(record["checkpoint_sha256"]) == 64
    reloaded = load_policy(out).eval()
    processor = load_processor(out)  # tokenizer + processor travelled along
    torch.testing.assert_close(fixed_logits(reloaded, processor), fixed_logits(model.eval(), processor), rtol=0, atol=0)
    assert (out / "generation_config.json").is_file() or not (source / "generation_config.json").is_file()
    assert not list(out.parent.glob(".hf.partial-*"))


def test_a_finished_output_is_never_overwritten(trained, converted):
    (source, _), (out, record) = trained, converted
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a finished conversion"):
        convert(source, out)
    assert (out / "model.safetensors").read_bytes() == before


def test_fsdp_sharded_state_converts_to_the_same_weights(trained, converted, tiny_model_dir, tmp_path):
    import torch.distributed.checkpoint as dcp

    (_, model), (hf_out, hf_record) = trained, converted
    sharded = tmp_path / "checkpoint-8"
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(sharded / "pytorch_model_fsdp_0"))  # accelerate's layout
    with pytest.raises(CheckpointError, match="without config.json; pass --base"):
        convert(sharded, tmp_path / "no-base")
    record = convert(sharded, tmp_path / "hf", base=tiny_model_dir)
    assert record["source_format"] == "fsdp_sharded" and record["max_logit_diff"] == 0.0
    assert record["checkpoint_sha256"] == hf_record["checkpoint_sha256"]
    a, b = load_file(hf_out / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_and_partial_inputs_fail_clearly(trained, tmp_path):
    source, _ = trained
    with pytest.raises(CheckpointError, match="no such directory"):
        convert(tmp_path / "absent", tmp_path / "out1")
    partial = tmp_path / "partial"
    shutil.copytree(source, partial)
    (partial / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="missing model-00002.safetensors"):
        convert(partial, tmp_path / "out2")
    truncated = tmp_path / "truncated"
    shutil.copytree(source, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="do not load"):
        convert(truncated, tmp_path / "out3")
    deepspeed = tmp_path / "ds"
    (deepspeed / "global_step2").mkdir(parents=True)
    (deepspeed / "latest").write_text("global_step2")
    (deepspeed / "global_step2" / "mp_rank_00_model_states.pt").write_bytes(b"x")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        with pytest.raises(CheckpointError, match="needs the deepspeed package"):
            convert(deepspeed, tmp_path / "out4", base=source)
    assert not any((tmp_path / name).exists() for name in ("out1", "out2", "out3", "out4"))


def test_cli_exit_codes(trained, converted, tmp_path):
    from vppo.cli import main

    source, _ = trained
    out, _ = converted
    assert main(["convert", str(source), "--out", str(out)]) == 2  # bad input (README): exit 2
    assert main(["convert", str(tmp_path / "absent"), "--out", str(tmp_path / "x")]) == 2


def test_the_converted_checkpoint_carries_the_base_processor_not_the_sources(trained, tiny_model_dir, tmp_path):
    """A trainer output whose processor carries training pixel bounds converts with the base model's processor."""
    source, _ = trained
    bounded = tmp_path / "bounded"
    shutil.copytree(source, bounded)
    config = json.loads((bounded / "processor_config.json").read_text())
    config["image_processor"]["size"] = {"shortest_edge": 28 * 28 * 6, "longest_edge": 28 * 28 * 12}
    (bounded / "processor_config.json").write_text(json.dumps(config))
    assert load_processor(bounded).image_processor.size["longest_edge"] == 28 * 28 * 12
    record = convert(bounded, tmp_path / "hf", base=tiny_model_dir)
    saved = json.loads((tmp_path / "hf" / "processor_config.json").read_text())
    assert saved == json.loads((tiny_model_dir / "processor_config.json").read_text())
    assert record["processor_from"] == str(tiny_model_dir)


def test_the_converted_checkpoint_keeps_the_processor_files_vllm_needs(trained, tiny_model_dir, tmp_path):
    """A hub checkpoint's flat preprocessor config, video processor config and chat template are copied over: vLLM
    refused a converted checkpoint without ``video_preprocessor_config.json`` (found by the two-node test)."""
    from vppo.data.tiny_models import write_hub_processor_files
    from vppo.training.convert import SHIPPED_PROCESSOR_FILES

    source, _ = trained
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    write_hub_processor_files(base, load_processor(base))
    convert(source, tmp_path / "hf", base=base)
    for name in SHIPPED_PROCESSOR_FILES:
        assert (tmp_path / "hf" / name).read_bytes() == (base / name).read_bytes(), name

"""Our lmms-eval models, for lmms-eval's ``lmms_eval.models`` entry-point group (see pyproject.toml).

lmms-eval loads each entry point and expects a ``ModelManifest``, a list of them, or a callable returning
them (a model class would be *called*); :func:`model_manifests` is that callable. :func:`register` puts the
same manifests into lmms-eval's live registry, so ``vppo eval`` works even where the installed package
metadata is stale (an editable install made before the entry point changed).
"""

from __future__ import annotations

#: lmms-eval model name -> chat model class (both are ``is_simple = False`` chat models).
MODELS = {
    "vppo_hf": "vppo.evaluation.lmms_adapter.VPPOHFModel",
    "vppo_vllm": "vppo.evaluation.vllm_adapter.VPPOVLLMModel",
}
#: ``vppo eval --backend`` -> lmms-eval model name.
BACKENDS = {"hf": "vppo_hf", "vllm": "vppo_vllm"}


def model_manifests() -> list:
    # Imported here, not at the top: importing lmms_eval.models loads the entry points, which import this
    # module; a top-level import would make that a circular import of a half-initialised module.
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=name, chat_class_path=path) for name, path in MODELS.items()]


def register() -> None:
    from lmms_eval.models import MODEL_REGISTRY_V2

    for manifest in model_manifests():
        MODEL_REGISTRY_V2.register_manifest(manifest, overwrite=True)

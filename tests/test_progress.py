"""Progress bars of the long CPU loops: on stderr (the rule's log), and rarely redrawn there."""

from __future__ import annotations

import torch

from vppo.progress import LOG_INTERVAL_S, progress


def test_into_a_log_file_the_bar_redraws_rarely(capsys):
    for _ in progress(range(5000), desc="work"):
        pass
    err = capsys.readouterr().err  # not a terminal, as a Snakemake log file
    assert "work: 100%" in err and "5000/5000" in err
    assert err.count("\r") <= 3  # the first draw and the last, not one per item
    assert progress(range(1), desc="x").mininterval == LOG_INTERVAL_S


def test_the_warm_start_fit_shows_a_bar(monkeypatch, capsys):
    """`vppo fetch-model mini`'s 200 supervised steps (fit_responses) count on stderr."""
    import vppo.rollout
    from vppo.data.tiny_models import fit_responses

    model = torch.nn.Linear(2, 1)
    batch = type("Batch", (), {"response_mask": torch.ones(1, 2)})()
    monkeypatch.setattr(vppo.rollout, "response_logprobs", lambda m, b: -m.weight.square().sum() * torch.ones(1, 2))
    losses = fit_responses(model, lambda step: batch, steps=3, lr=0.1, seed=0)
    assert len(losses) == 3 and losses[-1] < losses[0]
    err = capsys.readouterr().err
    assert "warm start: 100%" in err and "3/3" in err

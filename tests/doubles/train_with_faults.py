"""``vppo train`` under ``accelerate launch`` with faults injected, for the distributed tier.

    accelerate launch ... tests/doubles/train_with_faults.py [--inf-loss-at-step N --inf-loss-rank R]
                                                             [--exit-after-save-at-step N] -- <vppo train args>

- ``--inf-loss-at-step N --inf-loss-rank R``: at optimizer step N (0-based, the Trainer's ``global_step`` while the
  update is computed) rank R's loss is multiplied by inf, so that rank's gradients are inf/nan and the others'
  are finite: the update must be skipped whole, on every rank.
- ``--exit-after-save-at-step N``: every rank ends with exit status 1 right after checkpoint-N is written, as a
  job killed between two saves; a rerun must resume from it.
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> int:
    split = sys.argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("--inf-loss-at-step", type=int, default=None)
    parser.add_argument("--inf-loss-rank", type=int, default=1)
    parser.add_argument("--exit-after-save-at-step", type=int, default=None)
    faults = parser.parse_args(sys.argv[1:split])

    from transformers import TrainerCallback

    from vppo.cli import main as vppo_main
    from vppo.training import runner
    from vppo.training.trainer import VPPOTrainer

    if faults.inf_loss_at_step is not None:
        original = VPPOTrainer._compute_loss

        def poisoned(self, model, inputs):
            loss = original(self, model, inputs)
            if self.state.global_step == faults.inf_loss_at_step and self.accelerator.process_index == faults.inf_loss_rank:
                return loss * float("inf")
            return loss

        VPPOTrainer._compute_loss = poisoned

    if faults.exit_after_save_at_step is not None:
        class ExitAfterSave(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == faults.exit_after_save_at_step:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(1)

        build = runner.build_trainer

        def with_exit(request, recipe, reward=None, callbacks=None, preset=None):
            return build(request, recipe, reward, [*(callbacks or []), ExitAfterSave()], preset)

        runner.build_trainer = with_exit
    return vppo_main(["train", *sys.argv[split + 1:]])


if __name__ == "__main__":
    sys.exit(main())

"""After growth the training phase warms up by default, so its first steps do not undo the grown model."""

import json

from genai_train.config import load_config
from growth.train import GrowConfig, GrowScheduleConfig, GrowTrainer


def _rows(run_dir):
    return [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_default_warmup_rule():
    assert GrowScheduleConfig().resolved(1000).warmup_steps == 100
    assert GrowScheduleConfig().resolved(300).warmup_steps == 30
    assert GrowScheduleConfig(warmup_steps=0).resolved(1000).warmup_steps == 0


def test_training_after_growth_starts_warm_and_does_not_get_worse(corpus, small_ckpt, tmp_path):
    args = [
        f"--small={small_ckpt}",
        "--target=layers=2,d_model=32,heads=4,ffn=64",
        f"--data.root={corpus}",
        "--data.seq_len=16",
        "--data.batch_size=4",
        "--data.val_batches=2",
        "--ligo.steps=4",
        "--ligo.warmup_steps=0",
        "--train.steps=40",
        "--optim.lr=3e-3",
        "--run.log_every=1",
        "--eval.every=2",
        "--run.device=cpu",
        f"--run.dir={tmp_path / 'r'}",
    ]
    tr = GrowTrainer(load_config(GrowConfig, None, args))
    tr.fit(stop_after=8)
    tr.close()
    rows = _rows(tmp_path / "r")
    lrs = [r["lr"] for r in rows if r.get("phase") == "train"]
    assert lrs[:4] == [3e-3 * (k + 1) / 4 for k in range(4)]  # 10% of 40 steps
    # the validation loss after the first training steps is not above the one after the operator phase (a sanity
    # check: on a model this small, training without warm-up does not overshoot either; the LR above is the rule)
    val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    after_operator = val[4]
    assert all(val[s] <= after_operator + 0.02 for s in (6, 8)), val

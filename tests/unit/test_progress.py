"""Progress output: a bar on a terminal, plain lines every few percent in a log."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from cxr import progress


def test_off_a_terminal_a_loop_writes_one_line_per_tenth_and_none_with_a_carriage_return(capsys):
    assert not progress.on_terminal()  # pytest captures stderr
    bar = progress.progress_bar(range(100), desc="preprocess")
    for i in bar:
        bar.set_postfix(loss=f"{i / 100:.2f}")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert [line.split(" [")[0] for line in lines] == [f"preprocess: {p}% {p}/100" for p in range(10, 101, 10)]
    assert "\r" not in err and lines[-1].endswith("loss=0.99")


def test_a_quarter_step_and_an_unsized_loop():
    bar = progress.PlainProgress(total=7, desc="epoch 1/3", every=0.25)
    written = []
    bar.line = lambda: written.append(bar.n) or setattr(bar, "written_at", bar.n)
    for _ in range(7):
        bar.update()
    bar.close()
    assert written == [2, 4, 6, 7]  # 29 %, 57 %, 86 %, then the end; never twice for one count
    bar.close()
    assert written == [2, 4, 6, 7]


def test_on_a_terminal_it_is_tqdm_and_disable_writes_nothing(monkeypatch, capsys):
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    bar = progress.progress_bar(range(3))
    assert isinstance(bar, tqdm)
    bar.close()
    capsys.readouterr()
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    list(progress.progress_bar(range(3), disable=True))
    assert capsys.readouterr().err == ""


def test_training_log_off_a_terminal_is_plain_lines(synthetic_split, capsys):
    from cxr.models.classifier import ModelConfig
    from cxr.train.config import TrainConfig
    from cxr.train.loop import fit

    train, val = synthetic_split
    fit(train, val, ModelConfig(backbone="resnet18"), TrainConfig(epochs=2, batch_size=8, amp=False), progress=True)
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out
    epochs = [line for line in captured.out.splitlines() if line.startswith("epoch=")]
    assert len(epochs) == 2 and all("val_auc=" in line for line in epochs)
    steps = int(np.ceil(len(train) / 8))
    assert len(captured.err.splitlines()) == 2 * len({min(steps, int(np.ceil(steps * q - 1e-9))) for q in
                                                      (0.25, 0.5, 0.75, 1.0)})

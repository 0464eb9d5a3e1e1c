"""The console: lines always, a progress bar only on a terminal."""

import io

from pretrain.train.console import Console


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_pipe_gets_lines_and_no_bar():
    stream = io.StringIO()
    console = Console(max_steps=10, stream=stream)
    console.progress(3)
    console.line("step 5/10 | loss 1.0")
    assert stream.getvalue() == "step 5/10 | loss 1.0\n"


def test_a_terminal_gets_tqdms_bar_and_lines_go_above_it():
    stream = Terminal()
    console = Console(max_steps=10, stream=stream)
    console.progress(5)
    assert "5/10" in stream.getvalue() and "50%" in stream.getvalue()
    console.line("step 5/10 | loss 1.0")
    assert "step 5/10 | loss 1.0\n" in stream.getvalue()
    assert "5/10" in stream.getvalue().rsplit("loss 1.0\n", 1)[1]  # the bar, drawn again below the line
    console.progress(10)  # the end closes the bar
    assert console._bar is None


def test_a_log_interval_line_shows_speed_memory_time_and_what_validation_covered():
    stream = io.StringIO()
    metrics = {"loss": 2.5, "lr": 3e-4, "tokens_per_s": 12345.6, "step_time_s": 0.0834, "memory_peak_gb": 1.234}
    metrics |= {"elapsed_s": 125, "eta_s": 3725, "skipped_steps": 0, "val_loss": 2.75, "val_perplexity": 15.64}
    metrics |= {"val_sequences": 1200, "val_tokens": 307200, "eval/web/loss": 2.5, "eval/cloze/acc": 0.4125}
    metrics |= {"eval/cloze/acc_norm": 0.375, "eval/perplexity": 15.64}
    Console(max_steps=100, stream=stream).report(20, metrics)
    assert stream.getvalue() == (
        "step     20/100 | loss 2.5000 | lr 3.00e-04 | 12,346 tok/s | 83 ms/step | mem 1.23 GiB | elapsed 2m05s | "
        "ETA 1h02m | val_loss 2.7500 (ppl 15.6; 1,200 sequences, 307,200 tokens) | web/loss 2.500 | "
        "cloze/acc 0.412 | cloze/acc_norm 0.375\n"
    )

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


def test_a_terminal_gets_a_bar_that_lines_clear():
    stream = Terminal()
    console = Console(max_steps=10, stream=stream)
    console.progress(5)
    assert stream.getvalue().endswith("\r[" + "#" * 15 + "." * 15 + "] 5/10")
    console.line("step 5/10 | loss 1.0")
    assert stream.getvalue().endswith("\r" + " " * 54 + "\rstep 5/10 | loss 1.0\n")

import io

from ssd.progress import Progress, format_duration


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_lines_show_count_rate_and_eta():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress(100, label="x", stream=stream, log_interval=10, clock=clock)
    for _ in range(50):
        clock.now += 0.5
        progress.update()
    progress.close()
    lines = stream.getvalue().splitlines()
    # not a terminal: a line every 10 s (at 10, 20 s) and a final one
    assert lines[0] == "x 20/100 ( 20.0%) 2.0 img/s elapsed 00:10 ETA 00:40"
    assert len(lines) == 3 and lines[-1].startswith("x 50/100 ( 50.0%) 2.0 img/s elapsed 00:25 ETA 00:25")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    progress = Progress(2, stream=terminal, clock=clock)
    clock.now += 1
    progress.update(2)
    progress.close()
    assert terminal.getvalue().startswith("\r2/2 (100.0%)") and terminal.getvalue().endswith("\n")


def test_unknown_total_and_long_durations():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress(None, label="eval", stream=stream, clock=clock)
    clock.now += 4
    progress.update(8)
    progress.close()
    assert stream.getvalue() == "eval 8 2.0 img/s elapsed 00:04\n"
    assert format_duration(3 * 3600 + 62) == "3:01:02"

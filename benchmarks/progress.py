"""Progress of a bench run on stderr, standard library only.

On a terminal: one bar redrawn in place, a step per implementation timed, with elapsed time and
what runs now. Elsewhere (CI logs, pipes): one line per case, so a log shows where a run is
without carriage-return noise. ``quiet``: nothing.
"""

import shutil
import sys
import time


class Progress:
    def __init__(self, title, total_steps, quiet=False, stream=None):
        self.stream = stream or sys.stderr
        self.mode = "off" if quiet else ("bar" if self.stream.isatty() else "lines")
        self.title, self.total, self.done, self.cases = title, max(total_steps, 1), 0, 0
        self.case_text, self.start = "", time.monotonic()

    def case(self, text):
        """A new case starts."""
        self.cases += 1
        self.case_text = text
        if self.mode == "lines":
            print(f"bench {self.title} case {self.cases}: {text}", file=self.stream, flush=True)

    def step(self, text):
        """A step (one implementation of the current case) starts."""
        if self.mode == "bar":
            self._draw(f"{self.case_text} {text}")
        self.done += 1

    def close(self):
        if self.mode == "bar":
            self.done = self.total
            self._draw("done")
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, text):
        width = 24
        filled = width * self.done // self.total
        elapsed = int(time.monotonic() - self.start)
        line = (f"{self.title} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"{elapsed // 60}:{elapsed % 60:02d} {text}")
        columns = shutil.get_terminal_size().columns - 1
        self.stream.write("\r" + line[:columns].ljust(columns))
        self.stream.flush()

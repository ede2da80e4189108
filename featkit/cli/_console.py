"""Output that survives a pipe: consoles, progress bars and once-only warnings.

- **Tables.** rich lays a table out to the console width, which is 80 columns when
  stdout is not a terminal: a summary table piped to a file came out with headers cut
  to ``10-s…``. :class:`PipeSafeConsole` reports a very wide console when it is not
  writing to a terminal (and ``COLUMNS`` is unset), so tables take their natural
  width and no header or cell is truncated. On a terminal nothing changes.
- **Progress.** ``featkit.cli._common.progress_bars`` draws rich bars on stderr only
  when stderr is a terminal; otherwise it hands out :data:`featkit.progress.SILENT`,
  so logs hold no bar fragments.
- **Warnings.** The ``featkit`` log handler carries a
  :class:`featkit.progress.OnceFilter`, so a warning logged in every episode prints once.

The shared consoles of ``featkit/cli/_common.py`` are built from :class:`PipeSafeConsole`.
"""

from __future__ import annotations

from rich.console import Console, ConsoleDimensions

# Wide enough for any table featkit prints; tables never stretch to it (expand=False).
PIPE_WIDTH = 4096


class PipeSafeConsole(Console):
    """A rich Console that never squeezes tables to 80 columns when not on a terminal."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and "COLUMNS" not in self._environ and not self.is_terminal:
            return ConsoleDimensions(PIPE_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size

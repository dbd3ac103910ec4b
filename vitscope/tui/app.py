"""``vitscope inspect``: a thin Textual app that hosts the screens (the inspector now).

The first paint needs no torch: the model is imported, loaded and traced in a worker of the
inspector screen, then the views fill in. Any crash ends the app with ``crash`` set (the CLI says
"internal error" in one line and exits 1); a model that cannot be opened ends the app with a
one-line message (exit status 2).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from textual.app import App
from textual.binding import Binding

from .commands import ScreenCommands
from .screens import InspectorScreen, Options

__all__ = ["InspectorApp", "Options"]


class InspectorApp(App):
    CSS_PATH = Path(__file__).with_name("vitscope.tcss")  # absolute: subclasses elsewhere keep the styles
    TITLE = "vitscope"
    COMMANDS = App.COMMANDS | {ScreenCommands}
    BINDINGS = [Binding("ctrl+c", "quit", "quit", show=False, priority=True),
                Binding("q", "quit", "quit"),
                Binding("T", "train_form", "train", show=False, tooltip="start a training run (a form)")]

    def __init__(self, options: Options, session: Any = None, start: Any = None, tracebacks: bool = True) -> None:
        """``start``: the first screen when it is not the inspector or the browser (the training screen).
        ``tracebacks=False``: a crash prints nothing on the way out; whoever runs the app reports ``crash``."""
        # ansi_color=True switches off Textual's ANSI-to-truecolor filter: it only converts named ANSI
        # colours (ours are few), but it costs a cache lookup per segment on every repaint, which was a
        # third of a key's time on the picture (thousands of colour pairs). Under NO_COLOR the default
        # stays: its monochrome filter keeps the picture's shades (the ANSI one would blank it).
        super().__init__(ansi_color=None if os.environ.get("NO_COLOR") else True)
        self.opts = options
        self._session = session
        self.error: str | None = None
        self.last_saved: Path | None = None  # the last picture any screen saved (printed on exit)
        self.farewell: list[str] = []  # lines printed after the app has left the terminal
        self.crash: BaseException | None = None  # the unhandled exception that ended the app, if any
        self.tracebacks = tracebacks
        self._start = start

    def on_mount(self) -> None:
        if self._start is not None:
            self.push_screen(self._start)
            return
        if not self.opts.image and self.opts.browse is not None:  # `inspect MODEL --dataset NAME`: the browser
            from .screens.browser import BrowserScreen

            self.push_screen(BrowserScreen(self.opts.browse))
            return
        self.push_screen(InspectorScreen(self.opts, self._session))

    def _handle_exception(self, error: Exception) -> None:
        # Textual ends the app on an unhandled exception (return code 1) and prints its traceback on the way
        # out; keep the first one so that the CLI can say it in one line, as for any other bug
        if self.crash is None:
            self.crash = error
        super()._handle_exception(error)

    def _print_error_renderables(self) -> None:
        if self.crash is not None and not self.tracebacks:
            self._exit_renderables.clear()
            return
        super()._print_error_renderables()

    @property
    def inspector(self) -> InspectorScreen:
        return next(s for s in self.screen_stack if isinstance(s, InspectorScreen))

    def fail(self, message: str, user_error: bool = True) -> None:
        """Nothing can be shown (the model or image did not open): leave with the message."""
        self.error = message
        self.exit(return_code=2 if user_error else 1)

    def live_run(self) -> Any:
        """The training screen whose run is still training, if any."""
        from .screens.training import TrainingScreen

        return next((s for s in reversed(self.screen_stack) if isinstance(s, TrainingScreen) and s.monitor.live
                     and not s.stop_sent), None)

    async def action_quit(self) -> None:
        from .modals import QuitRun

        if isinstance(self.screen, QuitRun):  # ctrl+c again in the question: leave the run training
            self.screen.dismiss("detach")
            return
        run = self.live_run()
        if run is None:
            self._leave()
            return

        def answer(choice: str | None) -> None:
            if choice == "stop":
                run.send_stop()
                self.farewell.append(f"the run in {run.run_dir} saves and stops after its current step; "
                                     f"continue it with: vitscope train --resume {run.run_dir}")
                self._leave()
            elif choice == "detach":
                self.farewell.append(f"the run in {run.run_dir} goes on training; reattach with: vitscope watch "
                                     f"{run.run_dir}")
                self._leave()

        self.push_screen(QuitRun(str(run.run_dir)), answer)

    def action_command_palette(self) -> None:
        from .textual_fixes import Palette

        if self.use_command_palette and not Palette.is_open(self):
            self.push_screen(Palette(id="--command-palette"))

    def search_themes(self) -> None:  # the palette's "Change theme" opens a second palette: the same guards
        from textual.theme import ThemeProvider

        from .textual_fixes import Palette

        self.push_screen(Palette(providers=[ThemeProvider], placeholder="Search for themes…"))

    def _leave(self) -> None:
        self.workers.cancel_all()  # long computations stop at their next model block
        self.exit()

    def action_train_form(self) -> None:
        from .modals import TrainForm

        def start(result: Any) -> None:
            if result is None:
                return
            from ..errors import VitscopeError
            from ..train.monitor import start_run
            from .screens.training import TrainingScreen

            args, run_dir = result
            try:
                proc = start_run(args, run_dir)
            except (OSError, VitscopeError) as e:
                self.notify(f"could not start the run: {e}", severity="error")
                return
            self.push_screen(TrainingScreen(run_dir, proc))

        self.push_screen(TrainForm(), start)

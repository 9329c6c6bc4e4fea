"""TensorBoard tracker: a run as event files (torch.utils.tensorboard.SummaryWriter).

Default folder: OUT/tensorboard (option ``log_dir``); view with ``tensorboard --logdir OUT/tensorboard``.
What goes where:

- parameters: the text ``params`` (a markdown table of the flattened recipe) and, at the end, the
  HParams dashboard's session (the parameters against the results);
- curves: scalars ``<stage>/<metric>`` at the optimizer step (``transfer/<point>/val_robust_acc``);
- results: scalars ``results/<point>/<metric>`` at step 0;
- files: small text files (up to 64 KiB: recipe.resolved.toml, results.csv, ...) as the text
  ``files/<name>``, others (plot.png, a long metrics.jsonl) as their path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from rtk.tracking import Tracker

TEXT_LIMIT = 64 * 1024  # bytes: a larger file is recorded by its path (TensorBoard keeps text in memory)


def build_tracker(config, out_dir: Path, run_name: str) -> TensorBoardTracker:
    """The TensorBoard tracker of the run in ``out_dir``: its event files go to ``config.log_dir``
    (default: OUT/tensorboard)."""
    log_dir = Path(config.log_dir).expanduser() if config.log_dir else Path(out_dir) / "tensorboard"
    return TensorBoardTracker(log_dir, run_name)


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _cell(value: Any) -> str:
    """A value as a markdown table cell: its pipes escaped and line breaks flattened."""
    return _text(value).replace("|", "\\|").replace("\n", " ")


def params_table(params: dict[str, Any]) -> str:
    """``params`` as the markdown table TensorBoard's text dashboard renders."""
    rows = [f"| {_cell(key)} | {_cell(value)} |" for key, value in params.items()]
    return "\n".join(["| parameter | value |", "|---|---|", *rows])


def _code_block(text: str) -> str:
    """``text`` shown verbatim: markdown renders four-space indented lines as code."""
    return "\n".join("    " + line for line in text.splitlines())


class TensorBoardTracker(Tracker):
    """Writes the run into the event files of ``log_dir`` (created when the run starts)."""

    def __init__(self, log_dir: Path, run_name: str):
        self.log_dir = Path(log_dir)
        self.run_name = run_name
        self.writer: SummaryWriter | None = None
        self.params: dict[str, Any] = {}
        self.result_tags: list[str] = []

    def _writer(self) -> SummaryWriter:
        if self.writer is None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        return self.writer

    def start(self, info: dict[str, Any]) -> None:
        lines = [f"- **{key}**: {_cell(value)}" for key, value in info.items() if value is not None]
        self._writer().add_text("run", f"rtk run **{self.run_name}**\n\n" + "\n".join(lines), 0)

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)
        self._writer().add_text("params", params_table(params), 0)

    def log_metrics(self, metrics: dict[str, float], step: int, stage: str) -> None:
        writer = self._writer()
        for name, value in metrics.items():
            writer.add_scalar(f"{stage}/{name}", value, step)

    def log_results(self, results: dict[str, float]) -> None:
        writer = self._writer()
        for key, value in results.items():
            tag = f"results/{key}"
            writer.add_scalar(tag, value, 0)
            if tag not in self.result_tags:
                self.result_tags.append(tag)
        writer.flush()  # results come after each point: make them visible while the sweep goes on

    def log_artifact(self, path: Path) -> None:
        path = Path(path)
        text = None
        if path.stat().st_size <= TEXT_LIMIT:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:  # plot.png and other binary files: their path only
                pass
        body = f"`{path}`" if text is None else f"`{path}`\n\n{_code_block(text)}"
        self._writer().add_text(f"files/{path.name}", body, 0)

    def finish(self, status: str = "finished") -> None:
        if self.writer is None:  # nothing was logged: leave no empty event file behind
            return
        if self.params:
            self._write_hparams(self.writer, status)
        self.writer.close()  # flushes
        self.writer = None

    def _write_hparams(self, writer: SummaryWriter, status: str) -> None:
        """The HParams dashboard's session in this run's own folder (SummaryWriter.add_hparams
        would open a sub-run), with the results logged above as its metrics."""
        from tensorboard.plugins.hparams.api_pb2 import Status
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

        values = {key: _text(value) if isinstance(value, bool) else value for key, value in self.params.items()}
        experiment, start_info, end_info = hparams(values, {tag: 0.0 for tag in self.result_tags})
        if status != "finished":
            plugin_data = end_info.value[0].metadata.plugin_data
            content = HParamsPluginData.FromString(plugin_data.content)
            content.session_end_info.status = Status.Value("STATUS_FAILURE")
            plugin_data.content = content.SerializeToString()
        file_writer = writer._get_file_writer()
        for summary in (experiment, start_info, end_info):
            file_writer.add_summary(summary)

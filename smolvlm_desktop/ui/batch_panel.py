"""The batch panel's widgets: set-up, running and summary pages (behaviour: batch_controller.py)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QFormLayout, QFrame,
                               QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem,
                               QPlainTextEdit,
                               QProgressBar, QPushButton, QRadioButton, QScrollArea,
                               QStackedWidget, QVBoxLayout, QWidget)

from ..presets import PRESETS

# What each detail level costs (512-px tiles, one vision pass each) and what it buys. The
# model's own level is named with its size once the model is loaded (model_detail_text).
DETAIL_LEVEL_TEXT = {
    512: "512 px · 1 tile: fastest; the whole scene and large text",
    1024: "1024 px · 5 tiles (5× the image work): smaller things and text",
    1536: "1536 px · 10 tiles (10×): fine text",
    2048: "2048 px · 17 tiles (17×, slowest): the finest print",
}
MODEL_DETAIL = "The model's own size"
DETAIL_CHOICES = [(None, MODEL_DETAIL), *DETAIL_LEVEL_TEXT.items()]
DETAIL_TIP = ("How finely the image is read. Each 512-px tile is one pass of the vision encoder: "
              "more tiles read smaller text and details and take longer (the times measured on "
              "this computer appear below once the model has answered). A small image gains "
              "nothing from a level above its own size.")


def vision_passes(longest_edge: int, tile: int = 512) -> int:
    """Tiles of a square image at this detail: 512 -> 1, 1024 -> 5, 1536 -> 10, 2048 -> 17."""
    n = -(-longest_edge // tile)
    return 1 if n <= 1 else n * n + 1


def model_detail_text(edge: int | None) -> str:
    """The first choice, once the model says its own size: "The model's own: 2048 px · 17 tiles"."""
    if not edge:
        return MODEL_DETAIL
    tiles = vision_passes(edge)
    return f"The model's own: {edge} px · {tiles} tile{'s' if tiles != 1 else ''}"
FORMAT_LABELS = {"txt": ".txt next to each image", "caption": ".caption next to each image",
                 "jsonl": "one metadata.jsonl file", "csv": "one captions.csv file",
                 "xmp": "photo.jpg.xmp sidecar (photo apps read it)",
                 "json": ".json next to each image"}
EXISTING = [("skip", "Skip images that have one"), ("overwrite", "Overwrite them"),
            ("append", "Append the new caption")]
CUSTOM = "custom"


def _hint(text: str) -> QLabel:
    label = QLabel(text)
    label.setObjectName("Hint")
    label.setWordWrap(True)
    return label


class ResumeBar(QFrame):
    """'A batch did not finish … [Resume batch] [Not now]' above the set-up form."""

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("Card")
        self.setAccessibleName("Unfinished batch")
        title = QLabel("Unfinished batch")
        title.setObjectName("SectionTitle")
        self.text = _hint("")
        self.resume_btn = QPushButton("Resume batch")
        self.resume_btn.setObjectName("Primary")
        self.resume_btn.setToolTip("Caption the images still to do, with that batch's own prompt "
                                   "and settings; finished images are not redone")
        self.dismiss_btn = QPushButton("Not now")
        text = QVBoxLayout()
        text.setSpacing(2)
        text.addWidget(title)
        text.addWidget(self.text)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 8)
        layout.addLayout(text, 1)
        layout.addWidget(self.resume_btn)
        layout.addWidget(self.dismiss_btn)
        self.hide()


class SetupPage(QWidget):
    """Where, what to ask, how fine, which files to write, what to do with existing ones.

    The form scrolls; the action bar below it (trial caption, where the files go, Try and
    Start) is pinned, so the main action is never below the fold."""

    def __init__(self, formats: list[str]) -> None:
        super().__init__()
        self.folder_radio = QRadioButton("Folder")
        self.selection_radio = QRadioButton("Selected images in the gallery")
        self.folder_radio.setChecked(True)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("Choose a folder of images…")
        self.folder_edit.setAccessibleName("Batch folder")
        self.browse_btn = QPushButton("Browse…")
        self.recursive_check = QCheckBox("Include sub-folders")
        self.preset_combo = QComboBox()
        self.preset_combo.setAccessibleName("Batch prompt preset")
        for key, (label, _) in PRESETS.items():
            self.preset_combo.addItem(label, key)
        self.preset_combo.addItem("Custom prompt", CUSTOM)
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setObjectName("BatchPrompt")
        self.prompt_edit.setAccessibleName("Batch prompt")
        self.prompt_edit.setFixedHeight(54)
        self.prompt_edit.setTabChangesFocus(True)  # keyboard users move on with Tab
        self.detail_combo = QComboBox()
        self.detail_combo.setAccessibleName("Detail level")
        for value, label in DETAIL_CHOICES:
            self.detail_combo.addItem(label, value)
        self.detail_combo.setToolTip(DETAIL_TIP)
        self.estimate = _hint("")  # expected time per image, once this machine has been measured
        self.estimate.setAccessibleName("Expected time per image")
        self.estimate.setWordWrap(False)  # two set lines
        self.estimate.setTextFormat(Qt.TextFormat.RichText)
        self.estimate.hide()
        self.format_checks = {f: QCheckBox(f"{f}: {FORMAT_LABELS.get(f, f)}") for f in formats}
        self.existing_radios = {key: QRadioButton(label) for key, label in EXISTING}
        self.existing_group = QButtonGroup(self)
        for radio in self.existing_radios.values():
            self.existing_group.addButton(radio)
        self.existing_radios["skip"].setChecked(True)
        self.try_btn = QPushButton("Try on one image")
        self.try_btn.setToolTip("Caption the first image with these settings; nothing is written")
        self.start_btn = QPushButton("Start batch")
        self.start_btn.setObjectName("Primary")
        self.start_btn.setToolTip("Caption every image and write the files (Ctrl+B)")
        self.preview = QPlainTextEdit()
        self.preview.setObjectName("LiveCaption")
        self.preview.setReadOnly(True)
        self.preview.setAccessibleName("Trial caption")
        self.preview.setPlaceholderText("The trial caption appears here.")
        self.preview.setFixedHeight(70)
        self.destination = _hint("")  # where the files will be written, or what is missing
        self.destination.setAccessibleName("Where captions are written")
        self.resume_bar = ResumeBar()
        self.resume_btn, self.dismiss_btn = self.resume_bar.resume_btn, self.resume_bar.dismiss_btn
        self.preview.hide()  # shown once there is a trial caption or a problem to read
        self.preview.textChanged.connect(lambda: self.preview.setVisible(bool(self.preview.toPlainText())))
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setWidget(self._form())
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.scroll, 1)
        layout.addWidget(self._action_bar())

    def _form(self) -> QWidget:
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder_radio)
        folder_row.addWidget(self.folder_edit, 1)
        folder_row.addWidget(self.browse_btn)
        source = QVBoxLayout()
        source.addLayout(folder_row)
        source.addWidget(self.recursive_check)
        source.addWidget(self.selection_radio)
        outputs = QVBoxLayout()
        for check in self.format_checks.values():
            outputs.addWidget(check)
        existing = QVBoxLayout()
        for radio in self.existing_radios.values():
            existing.addWidget(radio)
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.setVerticalSpacing(10)
        form.addRow("Images:", source)
        form.addRow("Ask:", self.preset_combo)
        form.addRow("", self.prompt_edit)
        form.addRow("Detail:", self.detail_combo)
        form.addRow("", self.estimate)
        form.addRow("Write:", outputs)
        form.addRow("Existing captions:", existing)
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(12, 12, 12, 12)
        layout.addWidget(self.resume_bar)
        layout.addLayout(form)
        layout.addStretch()
        return body

    def _action_bar(self) -> QWidget:
        bar = QFrame()
        bar.setObjectName("ActionBar")
        buttons = QHBoxLayout()
        buttons.addWidget(self.destination, 1)
        buttons.addWidget(self.try_btn)
        buttons.addWidget(self.start_btn)
        layout = QVBoxLayout(bar)
        layout.setContentsMargins(12, 8, 12, 8)
        layout.setSpacing(6)
        layout.addWidget(self.preview)
        layout.addLayout(buttons)
        return bar


class RunPage(QWidget):
    """Progress, the image being captioned and its caption as it streams, speed and ETA."""

    def __init__(self) -> None:
        super().__init__()
        self.title = QLabel("Captioning…")
        self.title.setObjectName("SectionTitle")
        self.progress = QProgressBar()
        self.progress.setAccessibleName("Batch progress")
        self.progress.setFormat("%v / %m")
        self.current = QLabel("Starting…")
        self.current.setWordWrap(True)
        self.caption = QPlainTextEdit()
        self.caption.setObjectName("LiveCaption")
        self.caption.setReadOnly(True)
        self.caption.setAccessibleName("Current caption")
        self.stats = _hint("")
        self.pause_btn = QPushButton("Pause")
        self.pause_btn.setToolTip("Pause after the current token; Resume goes on (Ctrl+P)")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setObjectName("Danger")
        self.cancel_btn.setToolTip("Stop the batch; captions already written stay")
        buttons = QHBoxLayout()
        buttons.addWidget(self.stats, 1)
        buttons.addWidget(self.pause_btn)
        buttons.addWidget(self.cancel_btn)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 12, 12, 12)
        layout.addWidget(self.title)
        layout.addWidget(self.progress)
        layout.addWidget(self.current)
        layout.addWidget(self.caption, 1)
        layout.addLayout(buttons)


class SummaryPage(QWidget):
    """How it went: the files written, each failure with its reason (a click selects the
    image), and what to do next: open the output folder, retry the failed, a new batch."""

    def __init__(self) -> None:
        super().__init__()
        self.title = QLabel()
        self.title.setObjectName("SectionTitle")
        self.title.setWordWrap(True)
        self.details = _hint("")
        self.written_label = QLabel()
        self.written = QListWidget()
        self.written.setAccessibleName("Files written")
        self.failures_label = QLabel()
        self.failures = QListWidget()
        self.failures.setAccessibleName("Failed images")
        self.failures.setWordWrap(True)
        self.open_btn = QPushButton("Open output folder")
        self.open_btn.setToolTip("Show the folder the captions were written to")
        self.retry_btn = QPushButton("Retry failed")
        self.retry_btn.setToolTip("Caption only the images that failed, with the same settings")
        self.back_btn = QPushButton("New batch")
        self.back_btn.setObjectName("Primary")
        row = QHBoxLayout()
        row.addWidget(self.open_btn)
        row.addWidget(self.retry_btn)
        row.addStretch()
        row.addWidget(self.back_btn)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 12, 12, 12)
        layout.addWidget(self.title)
        layout.addWidget(self.details)
        for label, box in ((self.written_label, self.written), (self.failures_label, self.failures)):
            layout.addWidget(label)
            layout.addWidget(box, 1)
        self.filler = QWidget()  # takes the height when there is no list: the heading stays on top
        layout.addWidget(self.filler, 1)
        layout.addLayout(row)
        self.show_lists([], [])

    def show_lists(self, written: list[tuple[str, str]], failures: list[tuple[str, str, str]]) -> None:
        """written: (name shown, full path); failures: (line shown, tooltip, image path)."""
        self.written.clear()
        for name, path in written:
            item = QListWidgetItem(name)
            item.setToolTip(path)
            self.written.addItem(item)
        self.failures.clear()
        for line, tip, path in failures:
            item = QListWidgetItem(line)
            item.setToolTip(tip)
            item.setData(Qt.ItemDataRole.UserRole, path)
            self.failures.addItem(item)
        self.written_label.setText(f"Files written ({len(written)}):")
        self.failures_label.setText(f"Failed ({len(failures)}): click one to select it in the gallery")
        for widget, shown in ((self.written_label, written), (self.written, written),
                              (self.failures_label, failures), (self.failures, failures),
                              (self.retry_btn, failures)):
            widget.setVisible(bool(shown))
        self.filler.setVisible(not written and not failures)


class BatchPanel(QStackedWidget):
    """The three pages; the controller switches between them."""

    def __init__(self, formats: list[str]) -> None:
        super().__init__()
        self.setup = SetupPage(formats)
        self.run = RunPage()
        self.summary = SummaryPage()
        for page in (self.setup, self.run, self.summary):
            self.addWidget(page)

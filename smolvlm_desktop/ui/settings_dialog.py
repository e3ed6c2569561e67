"""Settings ▸ Preferences: every setting with a control, validated by settings.py on OK.

Only what can work is offered: a variant the current model has no graphs for, or a provider
this onnxruntime build lacks, is listed greyed with the reason (choosing one stranded the
window on "Choose a model")."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout,
                               QGroupBox, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from ..settings import PROVIDERS, THEMES, Settings, SettingsError
from .batch_panel import DETAIL_CHOICES, DETAIL_TIP

VARIANTS = [(None, "Automatic (int8 on CPU)"), ("int8", "int8"), ("uint8", "uint8"),
            ("q4", "q4"), ("fp16", "fp16"), ("fp32", "fp32 (largest, exact)")]
PROVIDER_LABELS = {"auto": "Automatic (the fastest this computer has)", "cpu": "CPU",
                   "cuda": "CUDA (NVIDIA graphics)", "dml": "DirectML (Windows graphics)",
                   "coreml": "Core ML (Apple)"}



def _combo(name: str, items: list[tuple[object, str]], current: object) -> QComboBox:
    combo = QComboBox()
    combo.setAccessibleName(name)
    for value, label in items:
        combo.addItem(label, value)
    index = combo.findData(current)
    combo.setCurrentIndex(max(index, 0))
    return combo


def _grey_out(combo: QComboBox, value: object, reason: str) -> None:
    """List `value` but make it unselectable, saying why (on hover and after its label)."""
    row = combo.findData(value)
    model = combo.model()
    if row < 0 or not isinstance(model, QStandardItemModel):
        return
    model.item(row).setEnabled(False)
    combo.setItemText(row, f"{combo.itemText(row)}  ({reason})")
    combo.setItemData(row, reason, Qt.ItemDataRole.ToolTipRole)


def model_variants(folder: str | Path | None) -> set[str] | None:
    """The variants a model folder has complete graphs for; None when unknown (no model)."""
    from ..engine.files import find_variants
    from ..engine.types import ModelFolderError

    if folder is None:
        return None
    try:
        return set(find_variants(Path(folder)))
    except (ModelFolderError, OSError):
        return None


def _spin(name: str, low: int, high: int, value: int, special: str = "", unit: str = "") -> QSpinBox:
    spin = QSpinBox()
    spin.setAccessibleName(name)
    spin.setRange(low, high)
    spin.setValue(value)
    if unit:
        spin.setSuffix(f" {unit}")
    if special:
        spin.setSpecialValueText(special)  # shown for the lowest value
    return spin


def _dspin(name: str, low: float, high: float, step: float, value: float) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setAccessibleName(name)
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setDecimals(2)
    spin.setValue(value)
    return spin


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, parent: QWidget | None = None,
                 model_folder: str | Path | None = None) -> None:
        """model_folder: the model in use, whose variants are the only ones offered."""
        super().__init__(parent)
        self.setWindowTitle("Preferences")
        self.settings = settings
        s = settings
        self.variant = _combo("Variant", VARIANTS, s.variant)
        self.provider = _combo("Provider", [(p, PROVIDER_LABELS.get(p, p)) for p in PROVIDERS],
                               s.provider)
        self.note = QLabel()  # a saved choice that cannot work here, replaced by Automatic
        self.note.setObjectName("Hint")
        self.note.setWordWrap(True)
        self.note.hide()
        self._offer_only_what_works(model_folder)
        self.threads = _spin("Threads", 0, 256, s.threads or 0, "Automatic")
        self.idle = _spin("Unload when idle (minutes)", 0, 1440, s.idle_unload_minutes, "Never", "min")
        self.detail = _combo("Detail", DETAIL_CHOICES, s.detail)
        self.detail.setToolTip(DETAIL_TIP)
        self.max_tokens = _spin("Longest answer (tokens)", 1, 8192, s.max_new_tokens, unit="tokens")
        self.temperature = _dspin("Temperature", 0, 5, 0.1, s.temperature)
        self.top_p = _dspin("Top p", 0.01, 1, 0.05, s.top_p)
        self.top_k = _spin("Top k", 0, 100000, s.top_k, "Off")
        self.repetition = _dspin("Repetition penalty", 0.5, 3, 0.05, s.repetition_penalty)
        self.seed = _spin("Seed", -1, 2**31 - 1, -1 if s.seed is None else s.seed, "Random")
        self.theme = _combo("Theme", [(t, t.capitalize()) for t in THEMES], s.theme)
        self.error = QLabel()
        self.error.setObjectName("ErrorText")
        self.error.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        self.reset_btn = buttons.addButton("Reset to defaults", QDialogButtonBox.ButtonRole.ResetRole)
        self.reset_btn.setToolTip("Put every control back to its default; nothing changes until OK")
        self.reset_btn.clicked.connect(self.reset)
        layout = QVBoxLayout(self)
        layout.addWidget(self._group("Model", [("Variant:", self.variant), ("Provider:", self.provider),
                                               ("CPU threads:", self.threads),
                                               ("Unload when idle:", self.idle)]))
        layout.addWidget(self._group("Answers", [
            ("Detail:", self.detail), ("Longest answer:", self.max_tokens),
            ("Temperature:", self.temperature), ("Top p:", self.top_p), ("Top k:", self.top_k),
            ("Repetition penalty:", self.repetition), ("Seed:", self.seed)]))
        layout.addWidget(self._group("Appearance", [("Theme:", self.theme)]))
        layout.addWidget(self.note)
        layout.addWidget(self.error)
        layout.addWidget(buttons)

    def _offer_only_what_works(self, model_folder: str | Path | None) -> None:
        from ..engine.runtime import available_providers

        have = model_variants(model_folder)
        if have is not None:
            name = Path(str(model_folder)).name
            for value, _ in VARIANTS:
                if value is not None and value not in have:
                    _grey_out(self.variant, value, f"not in {name}")
        usable = set(available_providers())
        for value in PROVIDERS:
            if value != "auto" and value not in usable:
                _grey_out(self.provider, value, "not on this computer")
        replaced = []
        for combo in (self.variant, self.provider):
            if not combo.model().item(combo.currentIndex()).isEnabled():
                replaced.append(combo.currentText().split("  (")[0])
                combo.setCurrentIndex(0)  # Automatic: the saved choice cannot work here
        if replaced:
            self.note.setText(f"Your saved choice of {' and '.join(replaced)} cannot be used here, "
                              "so Automatic is shown; OK saves it.")
            self.note.show()

    def reset(self) -> None:
        """Every control to the default value (applied, like any change, only by OK)."""
        d = Settings()
        for combo, value in ((self.variant, d.variant), (self.provider, d.provider),
                             (self.detail, d.detail), (self.theme, d.theme)):
            combo.setCurrentIndex(max(combo.findData(value), 0))
        self.threads.setValue(d.threads or 0)
        self.idle.setValue(d.idle_unload_minutes)
        self.max_tokens.setValue(d.max_new_tokens)
        self.temperature.setValue(d.temperature)
        self.top_p.setValue(d.top_p)
        self.top_k.setValue(d.top_k)
        self.repetition.setValue(d.repetition_penalty)
        self.seed.setValue(-1 if d.seed is None else d.seed)
        self.error.clear()

    LABEL_WIDTH = "Repetition penalty:"  # the longest label: every group's column is this wide

    def _group(self, title: str, rows: list[tuple[str, QWidget]]) -> QGroupBox:
        box = QGroupBox(title)
        form = QFormLayout(box)
        for text, widget in rows:
            label = QLabel(text)
            label.setMinimumWidth(label.fontMetrics().horizontalAdvance(self.LABEL_WIDTH) + 8)
            form.addRow(label, widget)
        return box

    def values(self) -> dict[str, object]:
        return {
            "variant": self.variant.currentData(), "provider": self.provider.currentData(),
            "threads": self.threads.value() or None, "idle_unload_minutes": self.idle.value(),
            "detail": self.detail.currentData(), "max_new_tokens": self.max_tokens.value(),
            "temperature": round(self.temperature.value(), 4), "top_p": round(self.top_p.value(), 4),
            "top_k": self.top_k.value(), "repetition_penalty": round(self.repetition.value(), 4),
            "seed": None if self.seed.value() < 0 else self.seed.value(),
            "theme": self.theme.currentData(),
        }

    def accept(self) -> None:
        """Validate everything first, then apply all: a bad value changes nothing."""
        candidate = Settings(**{k: getattr(self.settings, k) for k in self.values()})
        try:
            for key, value in self.values().items():
                candidate.set(key, value)
        except SettingsError as exc:
            self.error.setText(str(exc))
            return
        for key in self.values():
            setattr(self.settings, key, getattr(candidate, key))
        super().accept()

"""Settings ▸ Preferences: every setting with a control, validated by settings.py on OK."""

from __future__ import annotations

from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout,
                               QGroupBox, QLabel, QSpinBox, QVBoxLayout, QWidget)

from ..settings import PROVIDERS, THEMES, Settings, SettingsError

VARIANTS = [(None, "Automatic (int8 on CPU)"), ("int8", "int8"), ("uint8", "uint8"),
            ("q4", "q4"), ("fp16", "fp16"), ("fp32", "fp32 (largest, exact)")]
DETAILS = [(None, "The model's own"), (512, "512 px"), (1024, "1024 px"), (1536, "1536 px"),
           (2048, "2048 px")]


def _combo(name: str, items: list[tuple[object, str]], current: object) -> QComboBox:
    combo = QComboBox()
    combo.setAccessibleName(name)
    for value, label in items:
        combo.addItem(label, value)
    index = combo.findData(current)
    combo.setCurrentIndex(max(index, 0))
    return combo


def _spin(name: str, low: int, high: int, value: int, special: str = "") -> QSpinBox:
    spin = QSpinBox()
    spin.setAccessibleName(name)
    spin.setRange(low, high)
    spin.setValue(value)
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
    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Preferences")
        self.settings = settings
        s = settings
        self.variant = _combo("Variant", VARIANTS, s.variant)
        self.provider = _combo("Provider", [(p, p) for p in PROVIDERS], s.provider)
        self.threads = _spin("Threads", 0, 256, s.threads or 0, "Automatic")
        self.idle = _spin("Unload when idle (minutes)", 0, 1440, s.idle_unload_minutes, "Never")
        self.detail = _combo("Detail", DETAILS, s.detail)
        self.max_tokens = _spin("Longest answer (tokens)", 1, 8192, s.max_new_tokens)
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
        layout = QVBoxLayout(self)
        layout.addWidget(self._group("Model", [("Variant:", self.variant), ("Provider:", self.provider),
                                               ("CPU threads:", self.threads),
                                               ("Unload when idle:", self.idle)]))
        layout.addWidget(self._group("Answers", [
            ("Detail:", self.detail), ("Longest answer:", self.max_tokens),
            ("Temperature:", self.temperature), ("Top p:", self.top_p), ("Top k:", self.top_k),
            ("Repetition penalty:", self.repetition), ("Seed:", self.seed)]))
        layout.addWidget(self._group("Appearance", [("Theme:", self.theme)]))
        layout.addWidget(self.error)
        layout.addWidget(buttons)

    @staticmethod
    def _group(title: str, rows: list[tuple[str, QWidget]]) -> QGroupBox:
        box = QGroupBox(title)
        form = QFormLayout(box)
        for label, widget in rows:
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

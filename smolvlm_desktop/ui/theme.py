"""Light and dark themes: a Fusion palette plus one style sheet with colour placeholders.

Why Fusion with our own palette: native styles differ per OS and some ignore palettes, so a
dark theme would be half dark on Windows. "system" follows the OS colour scheme
(`QStyleHints.colorScheme()`) and switches live when the user changes it.
"""

from __future__ import annotations

from importlib import resources

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPalette
from PySide6.QtWidgets import QApplication

LIGHT = {
    "window": "#f5f6f8", "base": "#ffffff", "alt_base": "#f0f2f5", "text": "#1d2433",
    "muted": "#5b6475", "disabled": "#9aa1ad", "button": "#ffffff", "border": "#d9dde3",
    "border_strong": "#b7bec9", "accent": "#3451d1", "accent_soft": "#e3e8ff",
    "danger": "#b3261e", "code_bg": "#eef0f4", "notice_bg": "#e8f0fe", "notice_fg": "#1d2433",
    "highlight_text": "#ffffff", "on_accent": "#ffffff",
    "indicator": "#7a8291", "check_icon": "check-white",
}
DARK = {
    "window": "#1b1d22", "base": "#24272e", "alt_base": "#2b2f37", "text": "#e6e8ec",
    "muted": "#a4abb8", "disabled": "#6b7280", "button": "#2d3139", "border": "#3a3f49",
    "border_strong": "#525966", "accent": "#7c93ff", "accent_soft": "#2e3660",
    "danger": "#ff8a80", "code_bg": "#2f333c", "notice_bg": "#263248", "notice_fg": "#e6e8ec",
    "highlight_text": "#0d1020", "on_accent": "#0d1020",
    "indicator": "#7a8291", "check_icon": "check-dark",
}


def system_is_dark() -> bool:
    return QGuiApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark


def resolve(theme: str) -> str:
    """'light' or 'dark' for a theme setting of 'system', 'light' or 'dark'."""
    if theme in ("light", "dark"):
        return theme
    return "dark" if system_is_dark() else "light"


def colours(theme: str) -> dict[str, str]:
    return DARK if resolve(theme) == "dark" else LIGHT


def palette_for(c: dict[str, str]) -> QPalette:
    p = QPalette()
    roles = {
        QPalette.ColorRole.Window: c["window"], QPalette.ColorRole.WindowText: c["text"],
        QPalette.ColorRole.Base: c["base"], QPalette.ColorRole.AlternateBase: c["alt_base"],
        QPalette.ColorRole.Text: c["text"], QPalette.ColorRole.Button: c["button"],
        QPalette.ColorRole.ButtonText: c["text"], QPalette.ColorRole.ToolTipBase: c["base"],
        QPalette.ColorRole.ToolTipText: c["text"], QPalette.ColorRole.Highlight: c["accent"],
        QPalette.ColorRole.HighlightedText: c["highlight_text"],
        QPalette.ColorRole.PlaceholderText: c["muted"], QPalette.ColorRole.Link: c["accent"],
        QPalette.ColorRole.BrightText: c["danger"],
    }
    for role, value in roles.items():
        p.setColor(role, QColor(value))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText,
                 QPalette.ColorRole.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(c["disabled"]))
    return p


def style_sheet(c: dict[str, str]) -> str:
    package = resources.files("smolvlm_desktop.resources")
    text = package.joinpath("style.qss").read_text("utf-8")
    text = text.replace("@icons@", str(package.joinpath("icons")).replace("\\", "/"))
    for key, value in c.items():
        text = text.replace(f"@{key}@", value)
    return text


def apply(app: QApplication, theme: str) -> str:
    """Apply a theme setting to the whole app; returns the resolved 'light' or 'dark'."""
    c = colours(theme)
    app.setStyle("Fusion")
    app.setPalette(palette_for(c))
    app.setStyleSheet(style_sheet(c))
    return resolve(theme)


def icon(name: str) -> QIcon:
    """An icon from resources/icons (SVG, so it is sharp at any scale)."""
    path = resources.files("smolvlm_desktop.resources").joinpath("icons").joinpath(f"{name}.svg")
    return QIcon(str(path))

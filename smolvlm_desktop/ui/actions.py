"""Menus and keyboard shortcuts: every main action has one, listed in Help ▸ Keyboard shortcuts."""

from __future__ import annotations

from typing import Callable

from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QMainWindow, QMenu

# (menu, text, shortcut, handler name on the window); None text = separator
MENUS: list[tuple[str, list[tuple[str, str, str] | None]]] = [
    ("&File", [("Open images…", "Ctrl+O", "open_images"), ("Open folder…", "Ctrl+Shift+O", "open_folder"),
               None, ("Remove selected from gallery", "Delete", "remove_selected"), None,
               ("Quit", "Ctrl+Q", "close")]),
    ("&Edit", [("Paste image", "Ctrl+V", "paste"), ("Select all images", "Ctrl+A", "select_all"),
               None, ("Preferences…", "Ctrl+,", "preferences")]),
    ("&View", []),  # the Theme submenu
    ("&Chat", [("Ask", "Ctrl+Return", "chat_send"), ("Stop", "Esc", "stop"),
               ("Regenerate", "Ctrl+R", "chat_regenerate"), ("Copy answer", "Ctrl+Shift+C", "chat_copy"),
               ("Clear conversation", "Ctrl+L", "chat_clear"), None,
               ("Go to chat", "Ctrl+1", "show_chat")]),
    ("&Batch", [("Start batch", "Ctrl+B", "batch_start"), ("Pause or resume", "Ctrl+P", "batch_pause"),
                ("Cancel batch", "Ctrl+Shift+X", "batch_cancel"), None, ("Go to batch", "Ctrl+2", "show_batch")]),
    ("&Library", [("Search the library", "Ctrl+F", "library_search"),
                  ("More like the selected image", "Ctrl+Shift+F", "more_like_selected"),
                  ("Index a folder…", "", "index_folder"), None,
                  ("Forget selected images…", "", "forget_selected"),
                  ("Forget everything…", "", "forget_everything"), None,
                  ("Go to library", "Ctrl+3", "show_library")]),
    ("&Model", [("Manage models…", "Ctrl+M", "manage_models")]),
    ("&Help", [("Keyboard shortcuts", "F1", "show_shortcuts"), ("About SmolVLM Desktop", "", "about")]),
]


def build_menus(window: QMainWindow, themes: list[str], on_theme: Callable[[str], None],
                current_theme: str) -> dict[str, QAction]:
    """Create the menu bar; returns the actions by handler name (tests trigger them)."""
    actions: dict[str, QAction] = {}
    for title, entries in MENUS:
        menu = window.menuBar().addMenu(title)
        for entry in entries:
            if entry is None:
                menu.addSeparator()
                continue
            text, keys, handler = entry
            action = QAction(text, window)
            if keys:
                action.setShortcut(QKeySequence(keys))
            action.triggered.connect(getattr(window, handler))
            if handler == "preferences":  # macOS moves it to the application menu
                action.setMenuRole(QAction.MenuRole.PreferencesRole)
            menu.addAction(action)
            actions[handler] = action
        if title == "&View":
            _theme_menu(menu.addMenu("Theme"), window, themes, on_theme, current_theme, actions)
    return actions


def _theme_menu(menu: QMenu, window: QMainWindow, themes: list[str],
                on_theme: Callable[[str], None], current: str, actions: dict[str, QAction]) -> None:
    group = QActionGroup(window)
    for name in themes:
        action = QAction(f"{name.capitalize()}" + (" (follow the system)" if name == "system" else ""), window)
        action.setCheckable(True)
        action.setChecked(name == current)
        action.triggered.connect(lambda _=False, n=name: on_theme(n))
        group.addAction(action)
        menu.addAction(action)
        actions[f"theme_{name}"] = action


def shortcuts_text() -> str:
    rows = []
    for title, entries in MENUS:
        for entry in entries:
            if entry and entry[1]:
                text = QKeySequence(entry[1]).toString(QKeySequence.SequenceFormat.NativeText)
                rows.append(f"{text:>16}   {entry[0]}")
    return "\n".join(rows)

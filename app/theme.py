"""Light and dark looks that follow the system colour scheme (Qt 6.5+), plus settings and resources."""
from __future__ import annotations

import os
from typing import Optional

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPalette

ORG, APP = "QuantStudio", "Quant Studio"
RESOURCES = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "resources"))
_settings_file: Optional[str] = None
_settings: Optional[QSettings] = None


def use_settings_file(path: Optional[str]) -> None:
    """Keep settings in an INI file (tests, self-test) instead of the user's settings."""
    global _settings_file, _settings
    if _settings is not None:
        _settings.sync()
    _settings_file, _settings = path, None


def settings() -> QSettings:
    """One QSettings for the process (each new one re-reads, and on deletion re-writes, the file)."""
    global _settings
    if _settings is None:
        _settings = (QSettings(_settings_file, QSettings.Format.IniFormat) if _settings_file
                     else QSettings(ORG, APP))
    return _settings


def resource(name: str) -> str:
    return os.path.join(RESOURCES, name)


def app_icon() -> QIcon:
    return QIcon(resource("quant-studio.svg"))


def system_is_dark(app: QGuiApplication) -> bool:
    hints = app.styleHints()
    scheme = hints.colorScheme() if hasattr(hints, "colorScheme") else Qt.ColorScheme.Unknown
    if scheme == Qt.ColorScheme.Unknown:     # no hint: judge the platform's own window colour
        return app.palette().color(QPalette.ColorRole.Window).lightness() < 110
    return scheme == Qt.ColorScheme.Dark


def _palette(colours: dict, disabled: str) -> QPalette:
    p = QPalette()
    for role, col in colours.items():
        p.setColor(role, QColor(col))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(disabled))
    return p


def dark_palette() -> QPalette:
    return _palette({QPalette.ColorRole.Window: "#25262b", QPalette.ColorRole.WindowText: "#e4e5e9",
                     QPalette.ColorRole.Base: "#1b1c20", QPalette.ColorRole.AlternateBase: "#2a2b31",
                     QPalette.ColorRole.ToolTipBase: "#2f3037", QPalette.ColorRole.ToolTipText: "#e4e5e9",
                     QPalette.ColorRole.Text: "#e4e5e9", QPalette.ColorRole.Button: "#2d2e34",
                     QPalette.ColorRole.ButtonText: "#e4e5e9", QPalette.ColorRole.BrightText: "#ff6b6b",
                     QPalette.ColorRole.Highlight: "#3e8ef7", QPalette.ColorRole.HighlightedText: "#ffffff",
                     QPalette.ColorRole.Link: "#6aa8ff", QPalette.ColorRole.PlaceholderText: "#8b8d98",
                     QPalette.ColorRole.Mid: "#3a3b42", QPalette.ColorRole.Midlight: "#34353c",
                     QPalette.ColorRole.Dark: "#151619", QPalette.ColorRole.Light: "#3d3e45"}, "#6c6e78")


def light_palette() -> QPalette:
    return _palette({QPalette.ColorRole.Window: "#f3f4f6", QPalette.ColorRole.WindowText: "#1d1e22",
                     QPalette.ColorRole.Base: "#ffffff", QPalette.ColorRole.AlternateBase: "#f5f6f8",
                     QPalette.ColorRole.ToolTipBase: "#ffffff", QPalette.ColorRole.ToolTipText: "#1d1e22",
                     QPalette.ColorRole.Text: "#1d1e22", QPalette.ColorRole.Button: "#f8f9fa",
                     QPalette.ColorRole.ButtonText: "#1d1e22", QPalette.ColorRole.BrightText: "#d92d20",
                     QPalette.ColorRole.Highlight: "#3e8ef7", QPalette.ColorRole.HighlightedText: "#ffffff",
                     QPalette.ColorRole.Link: "#1f6fd6", QPalette.ColorRole.PlaceholderText: "#8b8d98",
                     QPalette.ColorRole.Mid: "#c9ccd3", QPalette.ColorRole.Midlight: "#e3e5ea",
                     QPalette.ColorRole.Dark: "#a0a3ab", QPalette.ColorRole.Light: "#ffffff"}, "#a0a3ab")


def apply(app, dark: bool) -> None:
    app.setStyle("Fusion")
    app.setPalette(dark_palette() if dark else light_palette())
    try:
        with open(resource("studio.qss"), encoding="utf-8") as f:
            app.setStyleSheet(f.read())
    except OSError:
        pass

"""Small Playwright helpers for driving JupyterLab (sync API)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .conftest import ARTIFACTS

KERNEL_IDLE = re.compile(r"\|\s*Idle$")
EXECUTED_PROMPT = re.compile(r"^\[\d+\]:$")


def shot(page: Any, name: str) -> Path:
    """Save a screenshot of the Lab window under UI_ARTIFACTS."""
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def run_command(page: Any, label: str) -> None:
    """Run a command from the command palette by its label.

    The modal palette closes when it loses focus, which a layout change right after start
    can cause; so a palette that went away is opened again.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    palette = page.locator("#command-palette")
    for attempt in range(3):
        page.keyboard.press("Control+Shift+C")
        try:
            palette.locator(".lm-CommandPalette-input").fill(label, timeout=5_000)
            palette.locator(".lm-CommandPalette-item", has_text=label).first.click(timeout=5_000)
            return
        except PlaywrightTimeout:
            if attempt == 2:
                raise


def sidebar_tab(page: Any) -> Any:
    return page.locator('.jp-SideBar .lm-TabBar-tab[data-id="raykube-sidebar"]')


def new_notebook(page: Any) -> Any:
    """Open a Python notebook from the launcher and wait until its kernel is idle.

    The toolbar's execution indicator says "idle" before the kernel is connected; the
    status bar's "Python 3 (ipykernel) | Idle" only appears once it is.
    """
    launcher_tab = page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text="Launcher")
    if launcher_tab.count():
        launcher_tab.first.click()  # another tab (e.g. a dashboard) may be in front
    page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    notebook = page.locator(".jp-NotebookPanel:visible")
    notebook.wait_for()
    wait_kernel_idle(page)
    return notebook


def wait_kernel_idle(page: Any, timeout: float = 60_000) -> None:
    # The kernel status item reads "Python 3 (ipykernel) | Idle".
    page.locator(".jp-StatusBar-TextItem").filter(has_text=KERNEL_IDLE).first.wait_for(timeout=timeout)


def cell(notebook: Any, index: int) -> Any:
    return notebook.locator(".jp-Notebook .jp-Cell").nth(index)


def run_cell(page: Any, notebook: Any, index: int, code: str | None = None,
             timeout: float = 90_000) -> Any:
    """Optionally replace cell `index`'s source, run it, and wait for its `[n]:` prompt."""
    target = cell(notebook, index)
    editor = target.locator(".cm-content")
    editor.click()
    if code is not None:
        page.keyboard.press("Control+A")
        page.keyboard.insert_text(code)  # no key events, so no auto-closed brackets
    page.keyboard.press("Shift+Enter")
    prompt = target.locator(".jp-InputArea-prompt")
    page.wait_for_function(
        "([el, pattern]) => new RegExp(pattern).test(el.textContent.trim())",
        arg=[prompt.element_handle(), EXECUTED_PROMPT.pattern], timeout=timeout)
    return target


def use_theme(page: Any, theme: str) -> None:
    """Switch JupyterLab to its light or dark theme and wait until the CSS is swapped."""
    run_command(page, f"Use Theme: JupyterLab {theme.capitalize()}")
    light = "true" if theme == "light" else "false"
    page.wait_for_function(f"() => document.body.dataset.jpThemeLight === '{light}'")
    page.wait_for_timeout(300)  # theme CSS swap

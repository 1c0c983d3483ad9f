"""A throw-away JupyterLab setup for the browser tests: config, user settings and folders, all under one tmp dir.

``make_lab_home(root)`` writes everything and returns the environment variables that point
JupyterLab at it, so the tests never read or change the user's own ~/.jupyter. The settings make
the page quiet and predictable for a robot: no news or update pop-up, no extension manager (it
would ask PyPI), the notebook's own kernel (python3) started without a kernel chooser, every cell
kept in the DOM with JupyterLab's default windowing ("contentVisibility": cells out of view are not painted,
as in a reader's JupyterLab; "full" would take them out of the DOM), no autosave (the served notebooks are
copies anyway).

Run it by hand to look at the result: ``python tests/browser/lab_settings.py /tmp/labhome``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# JupyterLab user settings: {plugin id: {setting: value}}. Stored as <package>/<plugin>.jupyterlab-settings.
USER_SETTINGS = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/extensionmanager-extension:plugin": {"enabled": False},
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "contentVisibility", "autoStartDefaultKernel": True},
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
    "@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": False},
}

# Server-side config (jupyter_server_config.json): no news feed, no update check, no PyPI extension manager.
SERVER_CONFIG = {
    "LabApp": {
        "news_url": None,
        "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
        "extension_manager": "readonly",
    },
    "ServerApp": {"open_browser": False, "terminals_enabled": False},
}


def write_user_settings(settings_dir: Path) -> None:
    for plugin, values in USER_SETTINGS.items():
        package, name = plugin.split(":")
        path = settings_dir / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=2))


def make_lab_home(root: str | Path) -> dict[str, str]:
    """Create config, settings, workspaces, runtime and IPython folders under ``root``; return their env vars."""
    root = Path(root)
    dirs = {name: root / name for name in ("config", "settings", "workspaces", "runtime", "ipython")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    (dirs["config"] / "jupyter_server_config.json").write_text(json.dumps(SERVER_CONFIG, indent=2))
    write_user_settings(dirs["settings"])
    return {
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
        "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "IPYTHONDIR": str(dirs["ipython"]),
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/browser/lab_settings.py FOLDER")
    for key, value in make_lab_home(sys.argv[1]).items():
        print(f"export {key}={value}")

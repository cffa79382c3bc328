"""ClearML tracking: one Task per pipeline run; offline by default, a real server when one is configured.

Offline sessions land in `<workspace>/clearml/` as zip files that `clearml-task --import-offline-session` (or
Task.import_offline_session) uploads later. taoflow writes its own ClearML config for offline runs so that closing
a task takes milliseconds (no reporting subprocess) and the session records no environment variables and no code
diff: secrets such as NGC or ClearML keys have no path into it. With a server configured (CLEARML_API_HOST or a
clearml.conf), the user's own configuration is used as is.
"""

import contextlib
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)
OFFLINE_CONFIG = """sdk {
  development {
    report_use_subprocess: false
    store_uncommitted_code_diff: false
    log_os_environments: []
    vcs_repo_detect_async: false
  }
}
"""


def server_configured():
    if os.environ.get("CLEARML_API_HOST"):
        return True
    conf = os.environ.get("CLEARML_CONFIG_FILE") or os.path.expanduser("~/clearml.conf")
    return Path(conf).is_file() and "api_server" in Path(conf).read_text(errors="ignore")


def offline_session(workspace, task_id):
    """The offline session zip of a task this workspace recorded offline, or None (online, or deleted)."""
    path = Path(workspace).resolve() / "clearml" / "cache" / "offline" / f"{task_id}.zip"
    return str(path) if path.is_file() else None


class Tracker:
    """A thin layer over clearml.Task with the handful of calls the flows make."""

    def __init__(self, workspace, project, name, tags=(), offline=None):
        self.offline = (not server_configured()) if offline is None else offline
        if self.offline:
            base = Path(workspace).resolve() / "clearml"
            base.mkdir(parents=True, exist_ok=True)
            (base / "clearml.conf").write_text(OFFLINE_CONFIG)
            os.environ["CLEARML_CONFIG_FILE"] = str(base / "clearml.conf")
            os.environ["CLEARML_CACHE_DIR"] = str(base / "cache")
            os.environ["CLEARML_OFFLINE_MODE"] = "1"
        from clearml import Task
        if self.offline:
            Task.set_offline(offline_mode=True)
        with contextlib.redirect_stdout(sys.stderr):  # ClearML prints its banner; stdout may be a JSON summary
                self.task = Task.init(project_name=project, task_name=name, tags=list(tags), reuse_last_task_id=False,
                                  auto_connect_frameworks=False, auto_connect_arg_parser=False,
                                  auto_resource_monitoring=False)
        self.session = None

    @property
    def task_id(self):
        return self.task.id

    def record(self):
        """What a passport keeps of this task, so that later runs reusing the model link to it."""
        return {"clearml_task": self.task.id}

    def params(self, section, values: dict):
        self.task.connect(dict(values), name=section)

    def scalars(self, title, series, rows, x_key="epoch"):
        """Report every numeric column of rows (dicts, one per iteration) as a series under title."""
        logger = self.task.get_logger()
        for row in rows:
            for key, value in row.items():
                if key != x_key and isinstance(value, (int, float)) and value == value:  # skip NaN
                    logger.report_scalar(f"{title}/{key}", series, float(value), iteration=int(row[x_key]))

    def artifact(self, name, obj):
        self.task.upload_artifact(name, artifact_object=obj if not isinstance(obj, Path) else str(obj))

    def image(self, title, path, iteration=0):
        self.task.get_logger().report_image(title, Path(path).stem, iteration=iteration, local_path=str(path))

    def model(self, path, name, passport):
        """Register the exported model with its passport (offline: as an artifact; ClearML's OutputModel needs a
        server and fails with DummyModel errors offline)."""
        if self.offline:
            self.artifact("model", Path(path))
            self.artifact("model_passport", passport)
            return
        from clearml import OutputModel
        model = OutputModel(task=self.task, name=name, framework="ONNX", tags=[f"passport:{passport['id']}"])
        model.update_weights(weights_filename=str(path))
        model.update_design(config_text=json.dumps(passport, indent=2))

    def close(self):
        folder = self.task.get_offline_mode_folder() if self.offline else None
        with contextlib.redirect_stdout(sys.stderr):
            self.task.close()
        if folder:
            self.session = f"{folder}.zip"
        return self.session

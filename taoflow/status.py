"""TAO-style `status.json`: one JSON object per line, which TAO's tooling and dashboards read.

Keys follow nvidia_tao_tf1/cv/common/logging/logging.py: date, time, status (STARTED, RUNNING, SUCCESS, FAILURE,
SKIPPED), verbosity, message, plus optional kpi / categorical / graphical dictionaries and per-epoch fields.
"""

import json
import os
from datetime import datetime


class StatusLogger:
    def __init__(self, results_dir, append=False):
        self.path = None
        if results_dir:
            os.makedirs(results_dir, exist_ok=True)
            self.path = os.path.join(results_dir, "status.json")
            if not append and os.path.exists(self.path):
                os.remove(self.path)

    def write(self, message, status="RUNNING", verbosity="INFO", **extra):
        if self.path is None:
            return
        now = datetime.now()
        record = {"date": f"{now.month}/{now.day}/{now.year}", "time": f"{now.hour}:{now.minute:02d}:{now.second:02d}",
                  "status": status, "verbosity": verbosity, "message": message}
        record.update({k: v for k, v in extra.items() if v is not None})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

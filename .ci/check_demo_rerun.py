"""Checks a `taoflow demo --json` re-run summary: everything reused, the device already current, the ClearML offline
folder grown by less than 1 MB (sizes in bytes before and after the re-run), at most 15 s wall.

usage: check_demo_rerun.py SUMMARY_JSON CLEARML_BYTES_BEFORE CLEARML_BYTES_AFTER
"""

import json
import sys


def main(summary_path, before, after):
    again = json.load(open(summary_path))
    grown = int(after) - int(before)
    problems = []
    if again["device_server"] != "embedded":
        problems.append(f"device server {again['device_server']} (expected the embedded one: no sshd here)")
    if again["map"] < 0.85:
        problems.append(f"mAP {again['map']:.4f} < 0.85")
    if again["stages_run"]:
        problems.append(f"stages run again: {again['stages_run']}")
    if [d["status"] for d in again["fleet"]] != ["already_current"]:
        problems.append(f"fleet: {again['fleet']}")
    if grown >= 1 << 20:
        problems.append(f"the ClearML folder grew by {grown} bytes")
    if again["wall_seconds"] > 15:
        problems.append(f"the re-run took {again['wall_seconds']} s")
    print(f"re-run: {again['wall_seconds']} s, mAP {again['map']:.4f}, ClearML +{grown} bytes, "
          f"devices {[d['status'] for d in again['fleet']]}")
    return "re-run check failed: " + "; ".join(problems) if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))

"""The one deployment table: `prefect.yaml` at the repository root.

`prefect deploy --all` reads it for a work pool; `taoflow serve` reads the same file, so both offer the same
deployments with the same parameters. The only difference is where the workspace is: prefect.yaml names the shared
workspace of the GPU machines (the same absolute path on every machine), `taoflow serve -w DIR` uses DIR, and every
parameter path inside a deployment's `workspace` (its datasets, an inventory) is taken relative to it. A deployment
whose datasets lie outside its workspace would differ between the two, so loading refuses it.
"""

import importlib
from pathlib import Path

from .errors import TaoflowError

REPO = Path(__file__).resolve().parent.parent
PREFECT_YAML = REPO / "prefect.yaml"


def load(path=PREFECT_YAML):
    """prefect.yaml's deployments: [{name, entrypoint, description, tags, parameters, work_pool}], checked."""
    import yaml
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise TaoflowError(f"cannot read the deployment table {path}: {e}") from None
    deployments = (document or {}).get("deployments") or []
    names = [d.get("name") for d in deployments]
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise TaoflowError(f"{path}: every deployment needs a name of its own")
    for d in deployments:
        params = d.get("parameters") or {}
        workspace = params.get("workspace")
        if not isinstance(workspace, str) or not workspace.startswith("/"):
            raise TaoflowError(f"{path}: deployment {d['name']} needs an absolute `workspace` parameter")
        for where, value in _strings(params):
            if where != "workspace" and value.startswith("/") and _under(value, workspace) is None:
                raise TaoflowError(f"{path}: deployment {d['name']}: {where}={value} lies outside its workspace "
                                   f"{workspace}; `taoflow serve` could not place it")
    return deployments


def _strings(value, where=""):
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{where}.{k}" if where else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{where}[{i}]")


def _under(value, root):
    root = root.rstrip("/")
    if value == root:
        return ""
    if value.startswith(root + "/"):
        return value[len(root) + 1:]
    return None


def rebase(value, old_root, new_root):
    """`value` (any JSON-like parameters) with every path inside old_root moved inside new_root."""
    if isinstance(value, str):
        rel = _under(value, old_root)
        return value if rel is None else str(Path(new_root) / rel) if rel else str(new_root)
    if isinstance(value, dict):
        return {k: rebase(v, old_root, new_root) for k, v in value.items()}
    if isinstance(value, list):
        return [rebase(v, old_root, new_root) for v in value]
    return value


def table(workspace=None, path=PREFECT_YAML):
    """{name: {entrypoint, parameters, tags, description}}: prefect.yaml's deployments, with their workspace
    moved to `workspace` when given (taoflow serve)."""
    out = {}
    for d in load(path):
        params = d.get("parameters") or {}
        if workspace is not None:
            params = rebase(params, params["workspace"], str(Path(workspace).resolve()))
        out[d["name"]] = {"entrypoint": d["entrypoint"], "parameters": params, "tags": list(d.get("tags") or []),
                          "description": d.get("description")}
    return out


def load_flow(entrypoint):
    """The flow object of `flows/train_ssd.py:train_ssd` (imported as a module of the repository)."""
    file, _, name = entrypoint.partition(":")
    module = importlib.import_module(file[:-3].replace("/", ".") if file.endswith(".py") else file)
    return getattr(module, name)
